"""Site validation (``ecgfm evaluate``): ECG-FM's probabilities measured against a site's own labels.

* :mod:`~ecgfm.evaluation.predictions`: what was predicted (``ecgfm predict -o`` JSON Lines, an ``ecgfm batch``
  Parquet dataset, probe predictions);
* :mod:`~ecgfm.evaluation.site_labels`: what the site knows (a CSV of 0/1 columns, a CSV of SNOMED CT codes, WFDB
  headers with PhysioNet/CinC ``# Dx:`` lines), SNOMED CT mapped through :mod:`ecgfm.terminology`;
* :mod:`~ecgfm.evaluation.metrics`: AUROC, AUPRC, operating points, calibration (scikit-learn), bootstrap and Wilson
  intervals (SciPy);
* :mod:`~ecgfm.evaluation.thresholds`: thresholds chosen by Youden's J or for a target sensitivity, written in the
  layout of ``interpreter/thresholds.yaml`` with their provenance;
* :mod:`~ecgfm.evaluation.outputs`: ``metrics.json``, ``metrics.csv``, ``report.html`` (matplotlib plots embedded);
* :mod:`~ecgfm.evaluation.run`: one evaluation, from the two files to a complete output folder (or nothing).

May import: :mod:`ecgfm.labels`, :mod:`ecgfm.terminology`, :mod:`ecgfm.archive` (the batch output's reader and
schema), :mod:`ecgfm.settings` and :mod:`interpreter` (the thresholds in force and their layout). Imported by
:mod:`ecgfm.cli.evaluate` only.
"""

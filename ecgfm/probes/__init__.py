"""Probes: small heads trained on the pretrained ECG-FM encoder's embeddings for findings the finetuned model does
not know (the paper's linear probe; docs/probes.md).

* :mod:`ecgfm.probes.probe`: the probe file (safetensors: weights, biases, the standardisation, target names, the
  training summary and the sha256 of the pretrained checkpoint the embeddings came from; never pickle), its strict
  loading, and applying it (pure NumPy: standardise, logits, sigmoid);
* :mod:`ecgfm.probes.fit`: fitting one (scikit-learn's ``LogisticRegression`` per target, standardised inputs,
  balanced class weights, C chosen by cross-validation on the training records only, an out-of-fold AUROC with a
  seeded bootstrap interval);
* :mod:`ecgfm.probes.embeddings`: the embeddings of record files, for fitting without an ``ecgfm batch`` dataset.

May import: :mod:`ecgfm.records`, :mod:`ecgfm.results`, :mod:`ecgfm.network`, :mod:`ecgfm.inference` (to embed
records), scikit-learn (fitting only), safetensors. Never :mod:`serving`: the service, ``ecgfm batch`` and the
``ecgfm probe`` command all apply probes through :mod:`ecgfm.probes.probe`.
"""

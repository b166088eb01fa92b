"""Label order and segment aggregation as in ECG-FM's quickstart."""

import numpy as np
import pytest

from ecgfm.labels import AGGREGATION, LABELS, aggregate_probabilities

MAX_LABELS = {
    "Poor data quality",
    "Premature ventricular contraction",
    "Ventricular tachycardia",
    "Supraventricular tachycardia with aberrancy",
    "Electronic pacemaker",
}

# The rows of bowang-lab/ECG-FM `data/mimic_iv_ecg/labels/label_def.csv` (commit 3ff744e), in file order: the
# quickstart names the finetuned model's sigmoid outputs with `label_def.index.to_list()`, so row i is logit i.
LABEL_DEF_CSV_ROWS = (
    "Poor data quality",
    "Sinus rhythm",
    "Premature ventricular contraction",
    "Tachycardia",
    "Ventricular tachycardia",
    "Supraventricular tachycardia with aberrancy",
    "Atrial fibrillation",
    "Atrial flutter",
    "Bradycardia",
    "Accessory pathway conduction",
    "Atrioventricular block",
    "1st degree atrioventricular block",
    "Bifascicular block",
    "Right bundle branch block",
    "Left bundle branch block",
    "Infarction",
    "Electronic pacemaker",
)

# `AGG_METHODS` of bowang-lab/ECG-FM `notebooks/infer_quickstart.ipynb` (commit 3ff744e), in the notebook's order.
QUICKSTART_AGG_METHODS = {
    "Poor data quality": "max",
    "Sinus rhythm": "mean",
    "Premature ventricular contraction": "max",
    "Tachycardia": "mean",
    "Ventricular tachycardia": "max",
    "Supraventricular tachycardia with aberrancy": "max",
    "Bradycardia": "mean",
    "Infarction": "mean",
    "Atrioventricular block": "mean",
    "Right bundle branch block": "mean",
    "Left bundle branch block": "mean",
    "Electronic pacemaker": "max",
    "Atrial fibrillation": "mean",
    "Atrial flutter": "mean",
    "Accessory pathway conduction": "mean",
    "1st degree atrioventricular block": "mean",
    "Bifascicular block": "mean",
}


def test_there_are_17_labels_in_the_official_output_order():
    assert len(LABELS) == 17 and len(set(LABELS)) == 17
    assert LABELS[0] == "Poor data quality" and LABELS[1] == "Sinus rhythm" and LABELS[-1] == "Electronic pacemaker"
    assert LABELS.index("Atrial fibrillation") == 6 and LABELS.index("Infarction") == 15


def test_logit_i_is_row_i_of_ecg_fm_label_def_csv():
    """Source: bowang-lab/ECG-FM ``data/mimic_iv_ecg/labels/label_def.csv`` (the quickstart's label names)."""
    assert LABELS == LABEL_DEF_CSV_ROWS


def test_each_label_aggregates_as_the_quickstart_s_agg_methods():
    """Source: bowang-lab/ECG-FM ``notebooks/infer_quickstart.ipynb``, ``AGG_METHODS``."""
    assert AGGREGATION == QUICKSTART_AGG_METHODS
    assert {label for label, how in QUICKSTART_AGG_METHODS.items() if how == "max"} == MAX_LABELS


def test_episodic_findings_take_the_max_over_segments_and_the_rest_the_mean():
    assert {label for label, how in AGGREGATION.items() if how == "max"} == MAX_LABELS
    segments = np.array([np.linspace(0.1, 0.9, 17), np.linspace(0.9, 0.1, 17), np.full(17, 0.2)])
    record = aggregate_probabilities(segments)
    for i, label in enumerate(LABELS):
        expected = segments[:, i].max() if label in MAX_LABELS else segments[:, i].mean()
        assert record[i] == pytest.approx(expected)


@pytest.mark.parametrize("column", range(17))
def test_a_finding_in_one_segment_of_four_is_kept_whole_or_averaged_by_its_aggregation(column):
    segments = np.full((4, 17), 0.1)
    segments[2, column] = 0.9  # the finding shows in the third segment only
    record = aggregate_probabilities(segments)
    how = QUICKSTART_AGG_METHODS[LABEL_DEF_CSV_ROWS[column]]
    assert record[column] == pytest.approx(0.9 if how == "max" else (0.9 + 3 * 0.1) / 4)
    assert np.delete(record, column) == pytest.approx(np.full(16, 0.1))


def test_one_segment_is_its_own_record():
    segment = np.linspace(0.0, 1.0, 17)[None, :]
    record = aggregate_probabilities(segment)
    assert record.shape == (17,) and record.dtype == np.float64
    np.testing.assert_array_equal(record, segment[0])


def test_aggregation_is_in_double_precision_for_float32_input():
    segments = np.array([[0.1] * 17, [0.2] * 17, [0.4] * 17], dtype=np.float32)
    record = aggregate_probabilities(segments)
    assert record.dtype == np.float64
    means = [i for i, label in enumerate(LABELS) if label not in MAX_LABELS]
    np.testing.assert_array_equal(record[means], segments.astype(np.float64).mean(axis=0)[means])


@pytest.mark.parametrize("shape", [(2, 16), (2, 18), (0, 17), (17,), (1, 2, 17)])
def test_aggregation_refuses_the_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"expected \[n_segments>0, 17\] probabilities"):
        aggregate_probabilities(np.zeros(shape))

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


def test_there_are_17_labels_in_the_official_output_order():
    assert len(LABELS) == 17 and len(set(LABELS)) == 17
    assert LABELS[0] == "Poor data quality" and LABELS[1] == "Sinus rhythm" and LABELS[-1] == "Electronic pacemaker"
    assert LABELS.index("Atrial fibrillation") == 6 and LABELS.index("Infarction") == 15


def test_episodic_findings_take_the_max_over_segments_and_the_rest_the_mean():
    assert {label for label, how in AGGREGATION.items() if how == "max"} == MAX_LABELS
    segments = np.array([np.linspace(0.1, 0.9, 17), np.linspace(0.9, 0.1, 17), np.full(17, 0.2)])
    record = aggregate_probabilities(segments)
    for i, label in enumerate(LABELS):
        expected = segments[:, i].max() if label in MAX_LABELS else segments[:, i].mean()
        assert record[i] == pytest.approx(expected)


def test_aggregation_refuses_the_wrong_shape():
    with pytest.raises(ValueError):
        aggregate_probabilities(np.zeros((2, 16)))
    with pytest.raises(ValueError):
        aggregate_probabilities(np.zeros((0, 17)))

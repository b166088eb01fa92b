"""The full 90.9 M-parameter ECG-FM architecture end to end (demo weights in the official format), on the CPU."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from ecgfm.inference import Predictor, classify_segments
from ecgfm.labels import LABELS
from ecgfm.network.demo import write_demo_checkpoints
from ecgfm.network.fast import optimize_for_inference
from ecgfm.records.readers import read_record
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    pretrained, finetuned = write_demo_checkpoints(tmp_path_factory.mktemp("demo-full"), size="full")
    return Predictor.from_paths(str(pretrained), str(finetuned), device="cpu")


def test_full_size_models_load_with_the_published_sizes(predictor):
    assert predictor.finetuned.loaded.num_parameters == 90_386_321
    assert predictor.pretrained.loaded.config.embed_dim == 768 and predictor.pretrained.loaded.config.num_layers == 12


def test_full_size_prediction_gives_17_probabilities_and_a_768_dim_embedding(predictor):
    result = predictor.predict(read_record(DATA_DIR / "A1041.json"), per_segment=True)
    probabilities = result["clinical"]["probabilities"]
    assert list(probabilities) == list(LABELS) and all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert result["features"]["dim"] == 768 and np.all(np.isfinite(result["features"]["features"]))
    assert result["clinical"]["demo"] is True and len(result["clinical"]["segments"]) == 3


def test_full_size_fft_positional_conv_keeps_probabilities_within_parity_tolerance(predictor):
    prep = predictor.preprocess(read_record(DATA_DIR / "JS36330.json"))
    reference = classify_segments(predictor.finetuned, prep.segments)
    handle = predictor.finetuned
    fast_model = optimize_for_inference(copy.deepcopy(handle.loaded.model), precision="fp32", pos_conv="fft")
    fast_handle = dataclasses.replace(handle, loaded=dataclasses.replace(handle.loaded, model=fast_model))
    np.testing.assert_allclose(classify_segments(fast_handle, prep.segments), reference, atol=1e-5)


def test_full_size_record_outputs_are_the_documented_aggregation_of_its_segments(predictor):
    """Each label's record probability is the max or the mean of its per-segment ones (labels.AGGREGATION, the
    quickstart's AGG_METHODS), and the embedding is the mean of the segments' embeddings."""
    from ecgfm.labels import AGGREGATION

    result = predictor.predict(read_record(DATA_DIR / "A1041.json"), per_segment=True)
    segments = np.asarray(result["clinical"]["segments"])
    for i, label in enumerate(LABELS):
        expected = segments[:, i].max() if AGGREGATION[label] == "max" else segments[:, i].mean()
        assert result["clinical"]["probabilities"][label] == pytest.approx(expected, abs=1e-12), label
    assert len({round(p, 6) for p in segments.ravel()}) > 17  # the outputs vary by label and segment
    np.testing.assert_allclose(result["features"]["features"], np.mean(result["features"]["segments"], axis=0))


def test_full_size_inference_is_deterministic(predictor):
    segments = predictor.preprocess(read_record(DATA_DIR / "JS06908.json")).segments
    np.testing.assert_array_equal(predictor.pretrained.run(segments), predictor.pretrained.run(segments))

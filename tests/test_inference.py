"""Running a loaded model (``ecgfm.inference``): one call for either model, padding as lengths, the wire format."""

from __future__ import annotations

import numpy as np
import pytest

from ecgfm.inference import (
    ModelHandle,
    classify_segments,
    decode_batch,
    embed_segments,
    encode_batch,
    load_model,
    padding_mask_from_lengths,
    record_lengths,
)
from ecgfm.records.preprocess import preprocess
from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT


@pytest.fixture(scope="module")
def finetuned() -> ModelHandle:
    return load_model("finetuned", str(FINETUNED_CKPT), device="cpu")


@pytest.fixture(scope="module")
def pretrained() -> ModelHandle:
    return load_model("pretrained", str(PRETRAINED_CKPT), device="cpu")


def test_padding_travels_as_nan_and_comes_back_as_the_lengths() -> None:
    prep = preprocess(np.random.default_rng(0).standard_normal((12, 1500)), 500)  # 3 s: padded to one 5 s segment
    lengths = record_lengths(prep)
    assert lengths.tolist() == [1500]
    segments, decoded = decode_batch(encode_batch(prep.segments, lengths))
    np.testing.assert_array_equal(decoded, lengths)
    np.testing.assert_array_equal(padding_mask_from_lengths(decoded), prep.padding_mask)
    np.testing.assert_array_equal(segments, prep.segments)


def test_unpadded_segments_travel_unchanged_without_lengths() -> None:
    prep = preprocess(np.random.default_rng(1).standard_normal((12, 5000)), 500)
    assert record_lengths(prep) is None
    segments, lengths = decode_batch(encode_batch(prep.segments, None))
    assert lengths is None
    np.testing.assert_array_equal(segments, prep.segments)


def test_run_picks_the_output_by_kind(finetuned: ModelHandle, pretrained: ModelHandle) -> None:
    segments = preprocess(np.random.default_rng(2).standard_normal((12, 5000)), 500).segments
    probabilities, embeddings = finetuned.run(segments), pretrained.run(segments)
    assert probabilities.shape == (2, 17) and ((probabilities > 0) & (probabilities < 1)).all()
    assert embeddings.shape == (2, pretrained.loaded.config.embed_dim)
    np.testing.assert_array_equal(classify_segments(finetuned, segments), probabilities)
    np.testing.assert_array_equal(embed_segments(pretrained, segments), embeddings)
    with pytest.raises(TypeError, match="finetuned"):
        classify_segments(pretrained, segments)


def test_a_mixed_batch_gives_each_segment_what_it_gets_alone(finetuned: ModelHandle) -> None:
    """Full segments run without a mask and padded ones with theirs, whatever else is in the batch."""
    rng = np.random.default_rng(3)
    full = preprocess(rng.standard_normal((12, 5000)), 500)
    short = preprocess(rng.standard_normal((12, 1500)), 500)
    batch = np.concatenate([full.segments[:1], short.segments, full.segments[1:]])
    lengths = np.array([2500, 1500, 2500])
    together = finetuned.run(batch, lengths, batch_size=2)
    np.testing.assert_array_equal(together[[0, 2]], finetuned.run(full.segments))
    np.testing.assert_array_equal(together[1], finetuned.run(short.segments, record_lengths(short))[0])
    assert not np.allclose(together[1], finetuned.run(short.segments)[0])  # the mask changes the answer


def test_chunking_does_not_change_the_outputs(pretrained: ModelHandle) -> None:
    segments = preprocess(np.random.default_rng(4).standard_normal((12, 15000)), 500).segments  # 6 segments
    np.testing.assert_allclose(
        pretrained.run(segments, batch_size=4), pretrained.run(segments, batch_size=6), atol=1e-6
    )


def test_warm_up_runs_either_model_without_touching_the_outputs(
    finetuned: ModelHandle, pretrained: ModelHandle
) -> None:
    segments = preprocess(np.random.default_rng(5).standard_normal((12, 5000)), 500).segments
    before = finetuned.run(segments)
    finetuned.warm_up()
    pretrained.warm_up()
    np.testing.assert_array_equal(finetuned.run(segments), before)


def test_responses_name_the_checkpoint_file_but_not_its_path(finetuned: ModelHandle) -> None:
    loaded = finetuned.checkpoint()
    assert loaded.path == str(FINETUNED_CKPT.resolve()) and loaded.filename == FINETUNED_CKPT.name
    public = loaded.public().model_dump()
    assert "path" not in public and public["filename"] == FINETUNED_CKPT.name and len(public["sha256"]) == 64
    assert str(FINETUNED_CKPT.parent) not in str(public)

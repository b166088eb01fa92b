"""Shared test fixtures: paths to the real fixtures in ``../shared`` (parity checkpoints, PhysioNet records)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_DIR.parent / "shared"
PARITY_DIR = SHARED_DIR / "parity"
DATA_DIR = SHARED_DIR / "data"
CKPT_DIR = PARITY_DIR / "ckpt"
PRETRAINED_CKPT = CKPT_DIR / "ecgfm_small_pretrained.pt"
FINETUNED_CKPT = CKPT_DIR / "ecgfm_small_finetuned.pt"
TWELVE_LEAD_RECORDS = [
    entry["json"]
    for entry in json.loads((DATA_DIR / "index.json").read_text())["records"]
    if len(entry["lead_names"]) == 12
]


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    """The real fairseq-signals models' inputs, outputs and intermediates (``reference_outputs.npz``)."""
    with np.load(PARITY_DIR / "reference_outputs.npz") as npz:
        return {key: npz[key] for key in npz.files}


def load_json_record(name: str) -> dict:
    """A record of ``../shared/data`` as its JSON dict (signal in mV, ``fs``, ``lead_names``, labels)."""
    return json.loads((DATA_DIR / name).read_text())

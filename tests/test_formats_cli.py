"""``ecgfm convert`` and ``ecgfm predict`` on hospital files, against the reference decodings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecgfm.cli import main
from ecgfm.records.readers import read_record
from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT
from tests.test_formats import FORMATS_DIR, MUSE, reference

DICOM = FORMATS_DIR / "dicom" / "ecgtoolkit_Example.dcm"
PHILIPS = FORMATS_DIR / "philips_sierra" / "sierra_129DYPRG.XML"


def reference_json(path: Path, out: Path, samples: int | None = None) -> Path:
    ref = reference(path)
    body = {"fs": float(ref["fs"]), "lead_names": [str(n) for n in ref["lead_names"]]}
    body["signal"] = ref["signal"][:, :samples].tolist()
    out.write_text(json.dumps(body))
    return out


@pytest.mark.parametrize("path", [DICOM, MUSE, PHILIPS], ids=lambda p: p.name)
def test_convert_to_json_matches_the_reference_per_lead(path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "record.json"
    assert main(["convert", str(path), str(out)]) == 0
    body = json.loads(out.read_text())
    ref = reference(path)
    signal = np.array(body["signal"])
    assert body["fs"] == float(ref["fs"]) and body["units"] == "mV"
    assert body["lead_names"] == [str(n) for n in ref["lead_names"]]
    np.testing.assert_allclose(signal, ref["signal"][:, : signal.shape[1]], rtol=0, atol=1e-12)
    report = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert report["format"] == body["conversion"]["format"]
    assert report["derived_leads"] == (["III", "aVR", "aVL", "aVF"] if path == MUSE else [])
    assert bool(report["trimmed"]) == (path == PHILIPS)


def test_convert_to_npy_and_wfdb_round_trip(tmp_path: Path) -> None:
    ref = reference(MUSE)["signal"]
    assert main(["convert", str(MUSE), str(tmp_path / "r.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), ref, rtol=0, atol=1e-12)
    assert main(["convert", str(MUSE), str(tmp_path / "r.hea")]) == 0
    back = read_record(tmp_path / "r.hea")
    assert back.fs == 500.0 and back.lead_names[:2] == ["I", "II"]
    np.testing.assert_allclose(back.signal, ref, atol=0.5e-3 + 1e-12)  # 1 uV per count


def test_convert_reports_and_skips_a_bad_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(DICOM.read_bytes()[:300])
    assert main(["convert", str(bad), str(tmp_path / "out.json")]) == 2
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "out.json").exists()


def test_predict_on_files_equals_predict_on_the_reference_decoding_as_json(tmp_path: Path, capsys) -> None:
    n_philips = read_record(PHILIPS).signal.shape[1]  # the pulse trimmed: what the model may see
    inputs = [
        str(DICOM),
        str(reference_json(DICOM, tmp_path / "dicom_ref.json")),
        str(PHILIPS),
        str(reference_json(PHILIPS, tmp_path / "philips_ref.json", n_philips)),
        str(reference_json(PHILIPS, tmp_path / "philips_with_pulse.json")),
    ]
    code = main(["predict", *inputs, "--pretrained", str(PRETRAINED_CKPT), "--finetuned", str(FINETUNED_CKPT)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    dicom, dicom_ref, philips, philips_ref, with_pulse = lines
    assert dicom["conversion"]["format"] == "dicom" and "conversion" not in dicom_ref
    assert dicom["clinical"]["probabilities"] == dicom_ref["clinical"]["probabilities"]
    assert dicom["features"]["features"] == dicom_ref["features"]["features"]
    assert philips["clinical"]["probabilities"] == philips_ref["clinical"]["probabilities"]
    assert philips["conversion"]["trimmed"]
    # the pulse would have changed the answer (z-score) had it reached the model
    assert philips["features"]["features"] != with_pulse["features"]["features"]

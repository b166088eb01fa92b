"""Hospital ECG files (ecgfm.records.formats) against the independent reference decodings in ../shared/data/formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ecgfm.records.formats import FormatError, UnknownFormatError, read_file
from ecgfm.records.formats.calibration import find_calibration_pulse, trim_calibration_pulse
from ecgfm.records.formats.leads import LeadNameError, canonical_lead, derive_limb_leads
from ecgfm.records.preprocess import LEAD_ORDER
from ecgfm.records.readers import read_record
from ecgfm.records.record import RecordError
from tests.conftest import DATA_DIR

FORMATS_DIR = DATA_DIR / "formats"
FILES = sorted(p for p in FORMATS_DIR.glob("*/*") if p.is_file() and not p.name.endswith((".npz", ".json", ".md")))
MUSE = FORMATS_DIR / "ge_muse" / "ecg2dcm_guangxi_teaching_sinus_rhythm.xml"
AECG = FORMATS_DIR / "hl7_aecg" / "hl7_Example_aECG.xml"
DICOM = FORMATS_DIR / "dicom" / "pydicom_waveform_ecg.dcm"
PHILIPS_104 = FORMATS_DIR / "philips_sierra" / "sierra_3191723_ZZDEMOPTONLY_1-04_orig.xml"


def reference(path: Path) -> dict[str, np.ndarray]:
    with np.load(f"{path}.decoded.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def pulse_window(fs: float) -> slice:
    """10.7-10.9 s, where the fixtures' README says Philips carts put the calibration pulse."""
    return slice(round(10.7 * fs), round(10.9 * fs))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_lead_matches_the_reference_decoding_in_millivolts(path: Path) -> None:
    ref = reference(path)
    record = read_file(path)
    assert record.fs == float(ref["fs"])
    assert record.lead_names[:12] == [str(name) for name in ref["lead_names"]]
    n = record.signal.shape[1]
    assert n <= ref["signal"].shape[1]
    for row, lead in enumerate(record.lead_names[:12]):
        error = np.abs(record.signal[row] - ref["signal"][row, :n]).max()
        assert error < 1e-9, f"{lead}: {error} mV"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_rhythm_is_read_never_the_median_beat(path: Path) -> None:
    ref = reference(path)
    record = read_file(path)
    assert record.conversion["waveform"] == "rhythm"
    if "median_signal" in ref:
        assert record.signal.shape[1] > 2 * ref["median_signal"].shape[1]


@pytest.mark.parametrize("path", sorted((FORMATS_DIR / "philips_sierra").glob("*.[xX][mM][lL]")), ids=lambda p: p.name)
def test_philips_calibration_pulse_is_trimmed_and_reported(path: Path) -> None:
    ref = reference(path)
    fs = float(ref["fs"])
    assert np.allclose(ref["signal"][:, pulse_window(fs)], ref["signal"][0, pulse_window(fs)].max())  # it is there
    record = read_file(path)
    assert record.signal.shape[1] <= pulse_window(fs).start
    assert record.signal.shape[1] == 10 * fs  # the strip's whole 10 s are kept, the lead-out and gap are not
    np.testing.assert_allclose(record.signal, ref["signal"][:, : int(10 * fs)], atol=1e-9)
    trims = record.conversion["trimmed"]
    assert trims[0]["start_s"] == pytest.approx(10.0) and "lead-out" in trims[0]["what"]
    assert trims and trims[-1]["start_s"] == pytest.approx(10.7) and trims[-1]["end_s"] == pytest.approx(11.0)
    assert "calibration pulse" in trims[-1]["what"]


def test_the_pulse_is_recognised_in_a_converted_record_not_by_vendor() -> None:
    # the Philips reference decoding (pulse included) as another reader would hand it over
    ref = reference(PHILIPS_104)
    found = find_calibration_pulse(ref["signal"], float(ref["fs"]))
    assert found == (pulse_window(500.0).start, pulse_window(500.0).stop)
    # and at another sampling rate
    upsampled = np.repeat(ref["signal"], 2, axis=1)
    assert find_calibration_pulse(upsampled, 1000.0) == (2 * found[0], 2 * found[1])


@pytest.mark.parametrize("path", [p for p in FILES if "philips" not in str(p)], ids=lambda p: p.name)
def test_no_pulse_found_in_files_without_one(path: Path) -> None:
    assert read_file(path).conversion["trimmed"] == []


def test_a_pulse_in_some_leads_only_is_ecg_and_kept() -> None:
    signal = reference(PHILIPS_104)["signal"].copy()
    signal[3:, pulse_window(500.0)] = 0.0
    assert find_calibration_pulse(signal, 500.0) is None
    assert trim_calibration_pulse(signal, 500.0)[0].shape == signal.shape


def test_a_pulse_in_the_middle_of_the_record_is_not_trimmed() -> None:
    signal = reference(PHILIPS_104)["signal"]
    longer = np.hstack([signal, signal[:, :2500]])  # the pulse now 5 s before the end
    assert find_calibration_pulse(longer, 500.0) is None


def test_ge_muse_derives_the_four_limb_leads_and_says_so() -> None:
    ref = reference(MUSE)
    record = read_file(MUSE)
    assert record.conversion["derived_leads"] == ["III", "aVR", "aVL", "aVF"] == list(ref["derived_leads"])
    assert record.conversion["units_in_file"] == "MICROVOLTS"
    assert len(record.conversion["lead_labels_in_file"]) == 8
    lead = dict(zip(record.lead_names, record.signal, strict=True))
    np.testing.assert_allclose(lead["aVF"], lead["II"] - lead["I"] / 2)


def test_ge_muse_reads_microvolts_per_bit_from_the_file(tmp_path: Path) -> None:
    text = MUSE.read_text(encoding="utf-8").replace(
        "<LeadAmplitudeUnitsPerBit>4.88<", "<LeadAmplitudeUnitsPerBit>9.76<"
    )
    changed = tmp_path / "muse.xml"
    changed.write_text(text, encoding="utf-8")
    np.testing.assert_allclose(read_file(changed).signal, 2 * read_file(MUSE).signal)


def muse_with_sample_bases(tmp_path: Path, median: str, rhythm: str) -> Path:
    """The GE MUSE fixture with the median-beat and rhythm waveforms' ``SampleBase`` set apart."""
    text = MUSE.read_text(encoding="utf-8")
    cut = text.index("<WaveformType>Rhythm")
    assert text[:cut].count("<SampleBase>500<") == 1 and text[cut:].count("<SampleBase>500<") == 1
    changed = text[:cut].replace("<SampleBase>500<", f"<SampleBase>{median}<") + text[cut:].replace(
        "<SampleBase>500<", f"<SampleBase>{rhythm}<"
    )
    path = tmp_path / f"muse_median{median}_rhythm{rhythm}.xml"
    path.write_text(changed, encoding="utf-8")
    return path


def test_ge_muse_takes_the_sampling_rate_of_the_rhythm_waveform_not_the_median_beat(tmp_path: Path) -> None:
    """The fixture has both waveforms at 500 Hz; here they differ, each way round (the median comes first)."""
    original = read_file(MUSE)
    median_apart = read_file(muse_with_sample_bases(tmp_path, median="250", rhythm="500"))
    assert median_apart.fs == 500.0
    np.testing.assert_array_equal(median_apart.signal, original.signal)
    rhythm_apart = read_file(muse_with_sample_bases(tmp_path, median="500", rhythm="1000"))
    assert rhythm_apart.fs == 1000.0
    assert rhythm_apart.signal.shape == original.signal.shape  # the same samples, now 5 s at 1000 Hz


def test_hl7_aecg_applies_each_sequences_scale_and_origin(tmp_path: Path) -> None:
    text = AECG.read_text(encoding="utf-8")
    first = text.index('code="MDC_ECG_LEAD_V2"')
    head, tail = text[:first], text[first:]
    tail = tail.replace('<origin value="0" unit="uV"/>', '<origin value="1" unit="mV"/>', 1)
    tail = tail.replace('<scale value="2.5" unit="uV"/>', '<scale value="0.005" unit="mV"/>', 1)
    changed = tmp_path / "aecg.xml"
    changed.write_text(head + tail, encoding="utf-8")
    original, scaled = read_file(AECG), read_file(changed)
    v2 = original.lead_names.index("V2")
    np.testing.assert_allclose(scaled.signal[v2], 2 * original.signal[v2] + 1.0)
    others = [i for i in range(12) if i != v2]
    np.testing.assert_array_equal(scaled.signal[others], original.signal[others])


@pytest.mark.parametrize(
    ("name", "lead"),
    [
        ("Lead I (Einthoven)", "I"),
        ("MDC_ECG_LEAD_AVR", "aVR"),
        ("5.6.3-9-62", "aVR"),
        ("2:64", "aVF"),
        (131133, "III"),
        ("avl", "aVL"),
        ("V4R", "V4R"),
        ("Lead V7", "V7"),
        ("MDC_ECG_LEAD_V3R", "V3R"),
    ],
)
def test_lead_names_are_normalised_across_vendors(name: str | int, lead: str) -> None:
    assert canonical_lead(name) == lead


def test_an_unmappable_lead_name_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LeadNameError, match="'Lead 13b'"):
        canonical_lead("Lead 13b")
    changed = tmp_path / "aecg.xml"
    changed.write_text(AECG.read_text(encoding="utf-8").replace("MDC_ECG_LEAD_V5", "MDC_ECG_LEAD_QQ9"), "utf-8")
    with pytest.raises(FormatError, match="MDC_ECG_LEAD_QQ9"):
        read_file(changed)


def test_extra_leads_are_kept_but_left_out_of_the_model_input(tmp_path: Path) -> None:
    text = AECG.read_text(encoding="utf-8")
    start = text.rindex("<component>", 0, text.index("MDC_ECG_LEAD_AVF"))  # the rhythm's aVF (medians follow)
    end = text.index("</component>", start) + len("</component>")
    v4r = text[start:end].replace("MDC_ECG_LEAD_AVF", "MDC_ECG_LEAD_V4R")
    changed = tmp_path / "aecg_v4r.xml"
    changed.write_text(text[:end] + v4r + text[end:], encoding="utf-8")
    record = read_file(changed)
    assert record.lead_names == [*LEAD_ORDER, "V4R"]
    assert record.conversion["extra_leads"] == ["V4R"]
    signal, names = record.model_input()
    assert names == list(LEAD_ORDER)
    np.testing.assert_array_equal(signal, read_file(AECG).signal)


def test_derive_limb_leads_keeps_stored_ones() -> None:
    signal = np.array([[1.0, 2.0], [3.0, 5.0], [9.0, 9.0]])
    out, names, derived = derive_limb_leads(signal, ["I", "II", "III"])
    assert derived == ["aVR", "aVL", "aVF"]
    np.testing.assert_allclose(out[2], [9.0, 9.0])  # III as stored, not II - I
    np.testing.assert_allclose(out[names.index("aVR")], [-2.0, -3.5])


def test_read_record_dispatches_on_content_whatever_the_suffix(tmp_path: Path) -> None:
    renamed = tmp_path / "export.bin"
    renamed.write_bytes(DICOM.read_bytes())
    record = read_record(renamed)
    assert record.conversion["format"] == "dicom"
    assert record.name == "export"


# ---- bad files -----------------------------------------------------------------------------------------------


def bad(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_dicom_is_a_format_error(tmp_path: Path) -> None:
    data = DICOM.read_bytes()
    for size in (200, len(data) // 3, len(data) - 1000):
        with pytest.raises(FormatError, match="DICOM"):
            read_file(data[:size])


def test_dicom_without_a_waveform_says_so() -> None:
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.PatientName = "Doe^Jane"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(FormatError, match="no waveform") as caught:
        read_file(buffer.getvalue())
    assert "Doe" not in str(caught.value)


def test_xml_that_is_not_an_ecg() -> None:
    with pytest.raises(UnknownFormatError, match="<invoice>"):
        read_file(b"<?xml version='1.0'?><invoice><total>3</total></invoice>")


def test_entity_bomb_is_refused_without_expansion() -> None:
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?><!DOCTYPE RestingECG [<!ENTITY l0 "lol">{lol}]><RestingECG>&l9;</RestingECG>'
    with pytest.raises(FormatError, match="entities"):
        read_file(bomb.encode())


def test_external_entity_is_refused(tmp_path: Path) -> None:
    secret = bad(tmp_path, "secret.txt", b"TOPSECRET")
    xxe = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><AnnotatedECG>&x;</AnnotatedECG>'
    with pytest.raises(FormatError, match="entities") as caught:
        read_file(xxe.encode())
    assert "TOPSECRET" not in str(caught.value)


def test_corrupt_base64_in_ge_muse(tmp_path: Path) -> None:
    text = MUSE.read_text(encoding="utf-8")
    start = text.index("<WaveFormData>", text.index("<WaveformType>Rhythm"))
    corrupt = text[: start + 20] + "!!*not base64*!!" + text[start + 20 :]
    with pytest.raises(FormatError, match="not valid base64"):
        read_file(bad(tmp_path, "muse.xml", corrupt.encode()))


def test_ge_muse_with_only_a_median_waveform(tmp_path: Path) -> None:
    text = MUSE.read_text(encoding="utf-8").replace("<WaveformType>Rhythm<", "<WaveformType>Median<")
    with pytest.raises(FormatError, match="no Rhythm waveform"):
        read_file(bad(tmp_path, "muse.xml", text.encode()))


def test_malformed_xml_and_random_bytes(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="malformed XML"):
        read_file(MUSE.read_bytes()[:5000])
    with pytest.raises(UnknownFormatError):
        read_file(bytes(range(256)) * 10)
    with pytest.raises(FormatError, match="SCP-ECG"):
        read_file((FORMATS_DIR / "scp_ecg" / "ecgtoolkit_Example.scp").read_bytes()[:3000])


def test_read_record_reports_the_file_and_the_problem(tmp_path: Path) -> None:
    path = bad(tmp_path, "scan.dcm", DICOM.read_bytes()[:400])
    with pytest.raises(RecordError, match=re.escape(str(path))):
        read_record(path)


def test_reference_sidecars_name_the_reader_used() -> None:
    # the comparison above is against independent readers, never this project's own output
    for path in FILES:
        sidecar = json.loads(Path(f"{path}.decoded.json").read_text())
        assert sidecar["reader"]["pypi_name"] in {"pydicom", "sierraecg", "aecg", "ecgdatakit"}

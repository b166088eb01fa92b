"""DICOM waveforms (12-Lead ECG, General ECG, and other Waveform Storage classes) with pydicom >= 3.

* The rhythm is taken, never the median beat: a file may hold both as separate multiplex groups. A group is a
  median when its ``MultiplexGroupLabel`` says so (MEDIAN, AVERAGE, REPRESENTATIVE, TEMPLATE, BEAT) or, unlabelled,
  when its ``WaveformOriginality`` is DERIVED while an ORIGINAL group exists. Of the rhythm groups, the longest.
* Amplitudes: pydicom's ``waveform_array`` (raw x ``ChannelSensitivity`` x ``ChannelSensitivityCorrectionFactor``
  + ``ChannelBaseline``), in each channel's ``ChannelSensitivityUnitsSequence`` unit (uV, mV), then to mV.
* Lead names from each channel's ``ChannelSourceSequence`` code (SCP-ECG ``5.6.3-9-N`` or MDC ``2:N``), else its
  code meaning, else ``ChannelLabel``.
* ``WaveformPaddingValue`` is not applied: 0 is a common padding value and a real sample value too.
"""

from __future__ import annotations

import io

import numpy as np

from ecgfm.records.formats.base import Decoded, unit_to_mv
from ecgfm.records.formats.errors import FormatError
from ecgfm.records.formats.leads import LeadNameError, canonical_lead

KIND = "DICOM"
_MEDIAN_WORDS = ("MEDIAN", "AVERAGE", "REPRESENTATIVE", "TEMPLATE", "BEAT")


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _label(group) -> str:
    return str(getattr(group, "MultiplexGroupLabel", "") or "").upper()


def _is_median(group, any_original: bool) -> bool:
    label = _label(group)
    if any(word in label for word in _MEDIAN_WORDS):
        return True
    if "RHYTHM" in label:
        return False
    return any_original and str(getattr(group, "WaveformOriginality", "")).upper() == "DERIVED"


def _lead_label(channel) -> str:
    source = channel.get("ChannelSourceSequence")
    candidates = []
    if source:
        item = source[0]
        candidates += [str(item.get("CodeValue", "") or ""), str(item.get("CodeMeaning", "") or "")]
    candidates.append(str(channel.get("ChannelLabel", "") or ""))
    candidates = [c for c in candidates if c.strip()]
    if not candidates:
        raise FormatError(f"{KIND}: a channel has neither a source code nor a label")
    for candidate in candidates:
        try:
            canonical_lead(candidate)
            return candidate
        except LeadNameError:
            continue
    raise FormatError(f"{KIND}: unknown lead {candidates[-1]!r} (code {candidates[0]!r})")


def _unit(channel) -> str:
    units = channel.get("ChannelSensitivityUnitsSequence")
    if not units:
        return "uV"  # DICOM's default for ECG (PS3.3 C.10.9.1.4.3)
    return str(units[0].get("CodeValue", "") or "uV")


def read(data: bytes) -> Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise FormatError(f"{KIND}: not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # truncated or corrupt: pydicom raises many kinds
        raise FormatError(f"{KIND}: truncated or corrupt file ({type(exc).__name__})") from None
    try:
        return _decode(ds)
    except FormatError:
        raise
    except Exception as exc:  # pydicom parses an element when it is first read: a corrupt one raises then (fuzzing)
        raise FormatError(f"{KIND}: a corrupt data element ({type(exc).__name__})") from None


def _decode(ds) -> Decoded:
    """The rhythm waveform of a dataset (any element access may raise: :func:`read` answers it)."""
    try:
        groups = list(ds.get("WaveformSequence") or [])
    except Exception as exc:
        raise FormatError(f"{KIND}: the waveform sequence cannot be read ({type(exc).__name__})") from None
    if not groups:
        sop = str(ds.get("SOPClassUID", "unknown"))
        raise FormatError(f"{KIND}: the file holds no waveform (SOP class {sop}); it is not an ECG waveform")
    any_original = any(str(getattr(g, "WaveformOriginality", "")).upper() == "ORIGINAL" for g in groups)
    rhythm = [i for i, g in enumerate(groups) if not _is_median(g, any_original)]
    if not rhythm:
        raise FormatError(f"{KIND}: the file holds only median beats, no rhythm waveform")
    index = max(rhythm, key=lambda i: int(getattr(groups[i], "NumberOfWaveformSamples", 0) or 0))
    group = groups[index]
    try:
        fs = float(group.SamplingFrequency)
        channels = list(group.ChannelDefinitionSequence)
        values = np.asarray(ds.waveform_array(index), dtype=np.float64)  # [samples, channels], sensitivity applied
    except Exception as exc:
        raise FormatError(f"{KIND}: the waveform data cannot be decoded ({type(exc).__name__})") from None
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise FormatError(f"{KIND}: the waveform data does not match its {len(channels)} channel definitions")
    units = [_unit(channel) for channel in channels]
    factors = np.array([unit_to_mv(unit, KIND) for unit in units])
    signal = values.T * factors[:, None]
    labels = [_lead_label(channel) for channel in channels]
    unit_text = units[0] if len(set(units)) == 1 else ", ".join(sorted(set(units)))
    notes = []
    if len(groups) > 1:
        notes.append(f"multiplex group {index} of {len(groups)} taken (label {_label(group) or 'none'})")
    return Decoded(
        format="dicom",
        signal=signal,
        fs=fs,
        labels=labels,
        units=unit_text,
        scaling="raw x ChannelSensitivity x ChannelSensitivityCorrectionFactor + ChannelBaseline (pydicom "
        "waveform_array), channel unit to mV",
        version=str(ds.get("SOPClassUID", "")) or None,
        notes=notes,
    )

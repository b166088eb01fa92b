"""GE MUSE XML (``<RestingECG>``), read with defusedxml.

* The rhythm: the ``<Waveform>`` whose ``WaveformType`` is Rhythm, never the Median.
* fs = ``SampleBase`` x 10^``SampleExponent``.
* Each ``<LeadData>``: ``WaveFormData`` is base64 of little-endian int16 counts, x ``LeadAmplitudeUnitsPerBit`` in
  ``LeadAmplitudeUnits`` (MICROVOLTS: 4.88 uV per bit is common), then to mV.
* MUSE stores 8 leads (I, II, V1-V6): the shared steps derive III, aVR, aVL, aVF and say so.
"""

from __future__ import annotations

import base64
import binascii
from xml.etree.ElementTree import Element

import numpy as np

from ecgfm.records.formats.base import Decoded, unit_to_mv
from ecgfm.records.formats.errors import FormatError
from ecgfm.records.formats.xml import child, children, text

KIND = "GE MUSE XML"


def _float(element: Element, name: str, default: float | None = None) -> float:
    value = text(child(element, name))
    if value in (None, ""):
        if default is None:
            raise FormatError(f"{KIND}: <{name}> is missing")
        return default
    try:
        return float(value)
    except ValueError:
        raise FormatError(f"{KIND}: <{name}> is not a number") from None


def read(data: bytes, root: Element) -> Decoded:
    waveforms = children(root, "Waveform")
    if not waveforms:
        raise FormatError(f"{KIND}: no <Waveform> in the file")
    rhythm = [w for w in waveforms if (text(child(w, "WaveformType")) or "").lower() == "rhythm"]
    if not rhythm:
        kinds = sorted({text(child(w, "WaveformType")) or "untyped" for w in waveforms})
        raise FormatError(f"{KIND}: no Rhythm waveform (the file holds {', '.join(kinds)} only)")
    waveform = rhythm[0]
    fs = _float(waveform, "SampleBase") * 10 ** _float(waveform, "SampleExponent", 0.0)
    labels: list[str] = []
    leads: list[np.ndarray] = []
    units: set[str] = set()
    per_bit: set[float] = set()
    for lead_data in children(waveform, "LeadData"):
        lead = (text(child(lead_data, "LeadID")) or "").strip()
        if not lead:
            raise FormatError(f"{KIND}: a <LeadData> has no <LeadID>")
        encoded = "".join((text(child(lead_data, "WaveFormData")) or "").split())
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"{KIND}: lead {lead[:12]}: WaveFormData is not valid base64") from None
        if len(raw) % 2:
            raise FormatError(f"{KIND}: lead {lead[:12]}: WaveFormData has an odd number of bytes for int16 samples")
        counts = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        expected = text(child(lead_data, "LeadSampleCountTotal"))
        if expected and expected.isdigit() and int(expected) != counts.size:
            raise FormatError(
                f"{KIND}: lead {lead[:12]}: {counts.size} samples decoded, LeadSampleCountTotal says {expected}"
            )
        scale = _float(lead_data, "LeadAmplitudeUnitsPerBit")
        unit = text(child(lead_data, "LeadAmplitudeUnits")) or "MICROVOLTS"
        leads.append(counts * scale * unit_to_mv(unit, KIND))
        labels.append(lead)
        units.add(unit)
        per_bit.add(scale)
    if not leads:
        raise FormatError(f"{KIND}: the Rhythm waveform holds no <LeadData>")
    lengths = {len(lead) for lead in leads}
    if len(lengths) > 1:
        raise FormatError(f"{KIND}: the leads have different numbers of samples {sorted(lengths)}")
    bits = ", ".join(f"{b:g}" for b in sorted(per_bit))
    unit_text = ", ".join(sorted(units))
    return Decoded(
        format="ge_muse",
        signal=np.vstack(leads),
        fs=fs,
        labels=labels,
        units=unit_text,
        scaling=f"base64 little-endian int16 counts x {bits} {unit_text} per bit (LeadAmplitudeUnitsPerBit), to mV",
        version=text(root.find("MuseInfo/MuseVersion")),
    )

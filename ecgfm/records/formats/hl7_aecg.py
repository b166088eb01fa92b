"""HL7 aECG (the FDA's annotated ECG XML, HL7 v3), read with defusedxml.

* The rhythm: the ``sequenceSet`` of a ``series`` (code RHYTHM when the file codes it), never the median beats of
  ``series/derivation/derivedSeries``.
* Time: the ``TIME_ABSOLUTE`` / ``TIME_RELATIVE`` sequence's ``increment`` (s or ms) gives fs.
* Leads in any order, each an ``SLIST_PQ`` with its own ``origin`` and ``scale`` (value and unit):
  value = digits x scale + origin, then to mV.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import numpy as np

from ecgfm.records.formats.base import Decoded, unit_to_mv
from ecgfm.records.formats.errors import FormatError
from ecgfm.records.formats.xml import child, children, path

KIND = "HL7 aECG"
_TIME_CODES = ("TIME_ABSOLUTE", "TIME_RELATIVE")
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _code(element: Element) -> str:
    code = child(element, "code")
    return (code.get("code") or "").strip() if code is not None else ""


def _quantity(element: Element | None, what: str, lead: str) -> tuple[float, str]:
    if element is None or element.get("value") is None:
        raise FormatError(f"{KIND}: lead {lead} has no {what}")
    try:
        return float(element.get("value", "")), element.get("unit") or ""
    except ValueError:
        raise FormatError(f"{KIND}: lead {lead}: the {what} is not a number") from None


def _rhythm_set(root: Element) -> Element:
    series = [s for component in children(root, "component") for s in children(component, "series")]
    if not series:
        raise FormatError(f"{KIND}: no <series> in the file: it holds no waveform")
    rhythm = [s for s in series if _code(s).upper() in ("RHYTHM", "")] or series
    for candidate in rhythm:
        for component in children(candidate, "component"):
            found = child(component, "sequenceSet")
            if found is not None:
                return found
    raise FormatError(f"{KIND}: no rhythm <sequenceSet> (only median beats or no waveform)")


def read(data: bytes, root: Element) -> Decoded:
    sequences = [s for component in children(_rhythm_set(root), "component") for s in children(component, "sequence")]
    fs = None
    labels: list[str] = []
    leads: list[np.ndarray] = []
    units: set[str] = set()
    for sequence in sequences:
        code = _code(sequence)
        value = child(sequence, "value")
        if value is None:
            continue
        if code.upper() in _TIME_CODES:
            increment, unit = _quantity(child(value, "increment"), "time increment", "time")
            if unit not in _SECONDS or increment <= 0:
                raise FormatError(f"{KIND}: the time increment {increment:g} {unit!r} is not usable")
            fs = 1.0 / (increment * _SECONDS[unit])
            continue
        lead = code or "(no code)"
        origin, origin_unit = _quantity(child(value, "origin"), "origin", lead)
        scale, scale_unit = _quantity(child(value, "scale"), "scale", lead)
        digits_text = (path(value, "digits").text or "") if path(value, "digits") is not None else ""
        try:
            digits = np.array(digits_text.split(), dtype=np.float64)
        except ValueError:
            raise FormatError(f"{KIND}: lead {lead}: the digits are not all numbers") from None
        signal = digits * scale * unit_to_mv(scale_unit, KIND) + origin * unit_to_mv(origin_unit or scale_unit, KIND)
        labels.append(code)
        leads.append(signal)
        units.add(scale_unit)
    if fs is None:
        raise FormatError(f"{KIND}: no time sequence (TIME_ABSOLUTE or TIME_RELATIVE increment): sampling rate unknown")
    if not leads:
        raise FormatError(f"{KIND}: the rhythm sequence set holds no lead")
    lengths = {len(lead) for lead in leads}
    if len(lengths) > 1:
        raise FormatError(f"{KIND}: the leads have different numbers of samples {sorted(lengths)}")
    return Decoded(
        format="hl7_aecg",
        signal=np.vstack(leads),
        fs=round(fs, 9),
        labels=labels,
        units=", ".join(sorted(units)),
        scaling="digits x scale + origin per sequence (SLIST_PQ), unit to mV",
    )

"""Lead names across vendors: one canonical name per lead, whatever the file calls it.

Files name leads by text ("Lead I (Einthoven)", "AVR", "MDC_ECG_LEAD_V1", "V4R") or by code: SCP-ECG
(``5.6.3-9-N`` in DICOM, the lead number N in SCP-ECG section 3) and MDC (ISO/IEEE 11073-10102:
``MDC_ECG_LEAD_*``, ``2:N`` in DICOM, ``131072 + N`` as a number). The SCP-ECG and MDC numbers of a lead are the
same (1 = I, 61 = III, 62 = aVR, ...), so one table serves both.

:func:`canonical_lead` maps a name or code to its canonical name; a name it cannot map is a
:class:`LeadNameError` naming it (nothing is guessed). :func:`split_leads` tells the 12 standard leads (the
model's input) from the others (V3R, V7, Frank X/Y/Z, ...), which converted records keep.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ecgfm.records.preprocess import LEAD_ORDER

# SCP-ECG (EN 1064, section 3 lead table) = MDC (11073-10102, MDC_ECG_LEAD_*) lead numbers.
LEAD_CODES: dict[int, str] = {
    1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6", 9: "V7",
    10: "V2R", 11: "V3R", 12: "V4R", 13: "V5R", 14: "V6R", 15: "V7R",
    16: "X", 17: "Y", 18: "Z", 19: "CC5", 20: "CM5", 21: "LA", 22: "RA", 23: "LL",
    24: "fI", 25: "fE", 26: "fC", 27: "fA", 28: "fM", 29: "fF", 30: "fH",
    61: "III", 62: "aVR", 63: "aVL", 64: "aVF", 65: "-aVR", 66: "V8", 67: "V9", 68: "V8R", 69: "V9R",
    70: "D", 71: "A", 72: "J",
}  # fmt: skip
MDC_LEAD_PARTITION = 2  # MDC partition of ECG leads: code 2:N, numeric 2 * 65536 + N
STANDARD_LEADS: tuple[str, ...] = LEAD_ORDER
_BY_TEXT = {name.lower(): name for name in LEAD_CODES.values()}
# Texts vendors write for the same leads.
_BY_TEXT |= {"d1": "I", "d2": "II", "d3": "III", "di": "I", "dii": "II", "diii": "III", "avrneg": "-aVR"}
_BY_TEXT |= {"neg_avr": "-aVR", "negavr": "-aVR", "x(frank)": "X", "y(frank)": "Y", "z(frank)": "Z"}
_SCP_CODE = re.compile(r"^5\.6\.3-9-(\d+)$")
_MDC_COLON = re.compile(r"^2:(\d+)$")
_DECORATIONS = re.compile(r"\((einthoven|goldberger|wilson|frank|nehb|unipolar|bipolar)\)", re.IGNORECASE)


class LeadNameError(ValueError):
    """A lead name or code that maps to no known lead; the message names it."""


def _from_number(number: int) -> str | None:
    if number > 65535 and number >> 16 == MDC_LEAD_PARTITION:
        number &= 0xFFFF
    return LEAD_CODES.get(number)


def canonical_lead(name: str | int) -> str:
    """``"Lead I (Einthoven)"``, ``"MDC_ECG_LEAD_AVR"``, ``"5.6.3-9-62"``, ``"2:62"``, ``131133``, ``"avr"`` ->
    ``"I"`` / ``"aVR"``: the canonical name of a lead (the 12 standard ones as in ``LEAD_ORDER``).

    Raises:
        LeadNameError: the name or code is not one of the known leads.
    """
    if isinstance(name, (int, np.integer)):
        found = _from_number(int(name))
        if found is None:
            raise LeadNameError(f"unknown lead code {int(name)}")
        return found
    text = str(name).strip()
    for pattern in (_SCP_CODE, _MDC_COLON):
        if match := pattern.match(text):
            found = _from_number(int(match.group(1)))
            if found is None:
                break
            return found
    if text.isdigit() and (found := _from_number(int(text))) is not None:
        return found
    key = _DECORATIONS.sub("", text)
    key = re.sub(r"^(mdc_ecg_lead_|lead[\s_-]*|ecg[\s_-]*lead[\s_-]*)", "", key.strip(), flags=re.IGNORECASE)
    key = key.strip().replace(" ", "").lower()
    if key in _BY_TEXT:
        return _BY_TEXT[key]
    raise LeadNameError(f"unknown lead name {text!r} (not one of the 12 standard leads nor a known extra lead)")


def canonical_leads(names: Sequence[str | int]) -> list[str]:
    """:func:`canonical_lead` of each name; a lead named twice is a :class:`LeadNameError`."""
    canonical = [canonical_lead(name) for name in names]
    seen: set[str] = set()
    for raw, lead in zip(names, canonical, strict=True):
        if lead in seen:
            raise LeadNameError(f"lead {lead} appears more than once (as {raw!r})")
        seen.add(lead)
    return canonical


def split_leads(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Canonical names -> (standard leads present, other leads) in their order."""
    standard = [name for name in names if name in STANDARD_LEADS]
    return standard, [name for name in names if name not in STANDARD_LEADS]


def standard_order(signal: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Rows reordered: the standard leads in ``LEAD_ORDER``, then the others in file order."""
    standard, extra = split_leads(names)
    order = [names.index(lead) for lead in STANDARD_LEADS if lead in standard] + [names.index(e) for e in extra]
    return signal[order], [names[i] for i in order]


def derive_limb_leads(signal: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Add III, aVR, aVL, aVF from I and II where the file lacks them (Einthoven and Goldberger):
    III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2.

    Returns:
        the signal with the derived rows appended, its names, and the names of the derived leads.
    """
    names = list(names)
    if "I" not in names or "II" not in names:
        return signal, names, []
    lead_i, lead_ii = signal[names.index("I")], signal[names.index("II")]
    formulas = {
        "III": lambda: lead_ii - lead_i,
        "aVR": lambda: -(lead_i + lead_ii) / 2,
        "aVL": lambda: lead_i - lead_ii / 2,
        "aVF": lambda: lead_ii - lead_i / 2,
    }
    derived = [lead for lead in formulas if lead not in names]
    if not derived:
        return signal, names, []
    rows = np.stack([formulas[lead]() for lead in derived])
    return np.vstack([signal, rows]), names + derived, derived

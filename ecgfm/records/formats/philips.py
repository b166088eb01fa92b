"""Philips Sierra / PageWriter XML (SierraECG 1.03, PhilipsECG 1.04, 1.04.01, 1.04.02) with sierraecg.

sierraecg decodes the base64 waveform, its XLI compression, and rebuilds III, aVR, aVL, aVF (stored as residuals).
The amplitude resolution (uV per count) and offset are read from ``<signalcharacteristics>``: the tag is
``<signalresolution>`` in 1.03 and ``<resolution>`` in 1.04+. These files carry 11 s per lead ending in a 1 mV
calibration pulse, which the shared steps trim (:mod:`ecgfm.records.formats.calibration`).
"""

from __future__ import annotations

import io
from xml.etree.ElementTree import Element

import numpy as np

from ecgfm.records.formats.base import Decoded
from ecgfm.records.formats.errors import FormatError
from ecgfm.records.formats.xml import child, path, text

KIND = "Philips XML"


def _number(element: Element | None, what: str) -> float | None:
    value = text(element)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise FormatError(f"{KIND}: <{what}> is not a number") from None


def read(data: bytes, root: Element) -> Decoded:
    import sierraecg

    characteristics = path(root, "dataacquisition", "signalcharacteristics")
    if characteristics is None:
        raise FormatError(f"{KIND}: no <dataacquisition>/<signalcharacteristics>: not a resting ECG with a waveform")
    resolution = _number(child(characteristics, "resolution"), "resolution")
    if resolution is None:
        resolution = _number(child(characteristics, "signalresolution"), "signalresolution")
    if resolution is None or resolution <= 0:
        raise FormatError(f"{KIND}: no amplitude resolution (<resolution> or <signalresolution>) in the file")
    offset = _number(child(characteristics, "signaloffset"), "signaloffset") or 0.0
    try:
        decoded = sierraecg.read_file(io.BytesIO(data))
    except (sierraecg.UnsupportedXmlFileError, sierraecg.MissingXmlElementError) as exc:
        raise FormatError(f"{KIND}: {exc.__class__.__name__.removesuffix('Error')}: {str(exc)[:80]}") from None
    except Exception as exc:  # corrupt base64 or XLI data
        raise FormatError(f"{KIND}: the waveform data cannot be decoded ({type(exc).__name__})") from None
    leads = decoded.leads
    if not leads:
        raise FormatError(f"{KIND}: the file holds no lead")
    lengths = {len(lead.samples) for lead in leads}
    if len(lengths) > 1:
        raise FormatError(f"{KIND}: the leads have different numbers of samples {sorted(lengths)}")
    counts = np.vstack([np.asarray(lead.samples, dtype=np.float64) for lead in leads])
    return Decoded(
        format="philips",
        signal=(counts - offset) * resolution * 1e-3,
        fs=float(leads[0].sampling_freq),
        labels=[lead.label for lead in leads],
        units="uV",
        scaling=f"(counts - {offset:g}) x {resolution:g} uV per count (sierraecg: XLI decoded, III/aVR/aVL/aVF "
        "rebuilt from residuals), to mV",
        version=f"{decoded.doc_type} {decoded.doc_ver}",
    )

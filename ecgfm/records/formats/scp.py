"""SCP-ECG (EN 1064 / ISO 11073-91064) with ecgdatakit's SCP-ECG parser (Huffman, difference and
reference-beat decoding are the library's); its physical values are converted to mV here."""

from __future__ import annotations

import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ecgfm.records.formats.base import Decoded, unit_to_mv
from ecgfm.records.formats.errors import FormatError

KIND = "SCP-ECG"


def is_scp(data: bytes) -> bool:
    """Section 0 right after the 6-byte preamble, its first pointer naming itself at byte 7."""
    if len(data) < 32:
        return False
    (record_size,) = struct.unpack_from("<I", data, 2)
    (section_id,) = struct.unpack_from("<H", data, 8)
    (section_length,) = struct.unpack_from("<I", data, 10)
    (first_id,) = struct.unpack_from("<H", data, 22)
    (first_at,) = struct.unpack_from("<I", data, 28)
    return (
        section_id == 0 and section_length >= 26 and (section_length - 16) % 10 == 0
        and record_size >= 6 + section_length and first_id == 0 and first_at == 7
    )  # fmt: skip


def read(data: bytes) -> Decoded:
    from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

    with tempfile.TemporaryDirectory() as tmp:  # the parser reads a path
        file = Path(tmp) / "record.scp"
        file.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = SCPECGParser().parse(file).to_physical()
        except Exception as exc:  # the parser's own errors and any other failure on corrupt data
            raise FormatError(f"{KIND}: truncated or corrupt file ({type(exc).__name__})") from None
    leads = list(record.leads)
    if not leads:
        raise FormatError(f"{KIND}: the file holds no rhythm lead")
    lengths = {len(lead.samples) for lead in leads}
    rates = {lead.sampling_rate for lead in leads}
    if len(lengths) > 1 or len(rates) > 1:
        raise FormatError(f"{KIND}: the leads differ in length or sampling rate")
    units = {lead.units or lead.resolution_unit for lead in leads}
    signal = np.vstack([np.asarray(lead.samples, dtype=np.float64) * unit_to_mv(lead.units, KIND) for lead in leads])
    version = record.file_format.version if record.file_format is not None else None
    return Decoded(
        format="scp_ecg",
        signal=signal,
        fs=float(rates.pop()),
        labels=[lead.label for lead in leads],
        units=", ".join(sorted(str(u) for u in units)),
        scaling="counts x amplitude value multiplier (section 6), decoded by ecgdatakit, to mV",
        version=version,
    )

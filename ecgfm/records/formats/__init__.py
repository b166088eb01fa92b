"""Hospital ECG files -> :class:`ecgfm.records.record.ECGRecord` (signal in mV, normalised lead names, fs, and a
``conversion`` report), one module per format family, the format told by the content (never the suffix):

===================  ===========================  ========================================================
format               module                       library
===================  ===========================  ========================================================
DICOM waveform       :mod:`ecgfm.records.formats.dicom`    pydicom (``waveform_array``)
HL7 aECG             :mod:`ecgfm.records.formats.hl7_aecg` defusedxml (the reader is ours)
Philips Sierra XML   :mod:`ecgfm.records.formats.philips`  sierraecg (XLI decompression, III/aVR/aVL/aVF rebuilt)
GE MUSE XML          :mod:`ecgfm.records.formats.ge_muse`  defusedxml + base64 (the reader is ours)
SCP-ECG              :mod:`ecgfm.records.formats.scp`      ecgdatakit (its SCP-ECG parser)
===================  ===========================  ========================================================

Shared steps (:func:`ecgfm.records.formats.base.finish`): lead names (:mod:`~ecgfm.records.formats.leads`),
III/aVR/aVL/aVF derived when only I and II are stored, standard order, a terminal 1 mV calibration pulse trimmed
(:mod:`~ecgfm.records.formats.calibration`). Errors: :class:`FormatError` (a
:class:`~ecgfm.records.record.RecordError`).
"""

from __future__ import annotations

from pathlib import Path

from ecgfm.records.formats import dicom, ge_muse, hl7_aecg, philips, scp
from ecgfm.records.formats.base import Decoded, finish
from ecgfm.records.formats.errors import FormatError
from ecgfm.records.formats.xml import local, parse_xml
from ecgfm.records.record import ECGRecord

MAX_FILE_BYTES = 64 * 2**20  # larger files are refused before they are read (the server has its own body limit)
FORMATS = ("dicom", "hl7_aecg", "philips", "ge_muse", "scp_ecg")
# The root element of each XML format.
_XML_ROOTS = {"AnnotatedECG": hl7_aecg.read, "restingecgdata": philips.read, "RestingECG": ge_muse.read}

__all__ = ["FORMATS", "MAX_FILE_BYTES", "FormatError", "UnknownFormatError", "read_bytes", "read_file", "sniff"]


class UnknownFormatError(FormatError):
    """Content that is none of the supported formats."""


def _looks_like_xml(data: bytes) -> bool:
    head = data[:512].lstrip(b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n")
    return head.startswith(b"<") or data[:2] in (b"\xff\xfe", b"\xfe\xff")


def sniff(data: bytes) -> str:
    """``dicom``, ``scp_ecg`` or ``xml`` from the first bytes; :class:`UnknownFormatError` otherwise."""
    if dicom.is_dicom(data):
        return "dicom"
    if scp.is_scp(data):
        return "scp_ecg"
    if _looks_like_xml(data):
        return "xml"
    raise UnknownFormatError(
        "not a supported ECG file (DICOM waveform, HL7 aECG, Philips Sierra/PageWriter XML, GE MUSE XML, SCP-ECG)"
    )


def decode_bytes(data: bytes) -> Decoded:
    """The file's content decoded, before the shared steps."""
    kind = sniff(data)
    if kind == "dicom":
        return dicom.read(data)
    if kind == "scp_ecg":
        return scp.read(data)
    root = parse_xml(data, "XML")
    reader = _XML_ROOTS.get(local(root.tag))
    if reader is None:
        raise UnknownFormatError(
            f"an XML file whose root element <{local(root.tag)[:40]}> is not an ECG format "
            "(expected HL7 aECG <AnnotatedECG>, Philips <restingecgdata> or GE MUSE <RestingECG>)"
        )
    return reader(data, root)


def read_bytes(data: bytes, name: str = "record") -> ECGRecord:
    """A record from a file's content (an HTTP body, say)."""
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"the file is larger than {MAX_FILE_BYTES} bytes")
    return finish(decode_bytes(data), name)


def read_file(source: str | Path | bytes, name: str | None = None) -> ECGRecord:
    """A record from a path or from a file's bytes; the format is told by the content.

    Raises:
        FormatError: unreadable, corrupt or unsupported (:class:`UnknownFormatError`); the message names it.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return read_bytes(bytes(source), name or "record")
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FormatError(f"the file is larger than {MAX_FILE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    return read_bytes(data, name or path.stem)

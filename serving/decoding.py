"""From a request to model input: decode the body (JSON fields or a ``.npy`` array), validate and preprocess once.

JSON bodies are parsed and checked against ``contract.ECGRequest`` by BentoML, and their fields go to
:func:`prepare`; every other body has a decoder here that ends in :func:`prepare` (:func:`decode_npy`,
:func:`decode_file`; a new input format is one more). The ``*_decoder`` functions at the end bind a decoder to an HTTP
request (its body, upload and query parameters), for the service to run on a worker thread. Decoders raise the errors of
``contract.ERRORS``: :class:`contract.BadRequestError` (400) for a body that cannot be read,
:class:`ecgfm.records.preprocess.ECGInputError` (422) for a readable body that is not a usable ECG.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request

from ecgfm.inference import encode_batch, record_lengths
from ecgfm.records.formats import FormatError, read_bytes
from ecgfm.records.preprocess import ECGInputError, PreprocessedECG, preprocess
from ecgfm.records.readers import npy_array, read_record
from ecgfm.records.record import ECGRecord, RecordError
from ecgfm.results.outputs import ConversionReport
from serving.contract import (
    ANSWERED_ERRORS,
    FILE_FIELD,
    FILE_MEDIA_TYPES,
    MULTIPART_MEDIA_TYPE,
    BadRequestError,
    UnsupportedMediaTypeError,
)

_FLAGS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class PreparedRequest:
    """A validated, preprocessed record and what the model services are sent for it."""

    record: PreprocessedECG
    batch: np.ndarray  # float32 [n_segments, 12, 2500], padding encoded (ecgfm.inference.encode_batch)
    per_segment: bool
    conversion: ConversionReport | None = None  # how an uploaded file was read (/<post>/file)
    saliency: bool = False  # also run the model services' saliency APIs (ecgfm.results.outputs.Saliency)


def prepare(
    signal: Sequence[Sequence[float]] | np.ndarray,
    fs: float,
    lead_names: list[str] | None,
    per_segment: bool,
    saliency: bool = False,
    *,
    max_duration_s: float,
) -> PreparedRequest:
    """Validate and preprocess a record once (raises :class:`ECGInputError`, 422, with a message to act on)."""
    record = preprocess(signal, fs, lead_names, max_duration_s=max_duration_s)
    batch = encode_batch(record.segments, record_lengths(record))
    return PreparedRequest(record, batch, per_segment, saliency=saliency)


def query_flag(name: str, value: str | None) -> bool:
    """A ``true``/``false`` (or ``1``/``0``) query parameter; absent is False (:class:`BadRequestError` else)."""
    if value is None:
        return False
    if value.lower() not in _FLAGS:
        raise BadRequestError(f"the query parameter {name} must be true or false")
    return _FLAGS[value.lower()]


def decode_npy(
    body: bytes,
    fs: str | None,
    lead_names: str | None,
    per_segment: str | None,
    saliency: str | None = None,
    *,
    max_duration_s: float,
) -> PreparedRequest:
    """A ``POST /<route>/npy`` request: the body is ``numpy.save`` of a ``[leads, samples]`` numeric array.

    Query parameters: ``fs`` (required, Hz), ``lead_names`` (comma-separated, optional), ``per_segment`` and
    ``saliency`` (``true``/``false``, optional).

    Raises:
        BadRequestError: not an ``.npy`` array, a pickled object array, or unreadable query parameters.
    """
    if fs is None:
        raise BadRequestError("the query parameter fs (sampling rate in Hz) is required, e.g. ?fs=500")
    try:
        fs_hz = float(fs)
    except ValueError:
        raise BadRequestError("the query parameter fs must be a number (Hz)") from None
    if per_segment is not None and per_segment.lower() not in _FLAGS:
        raise BadRequestError("the query parameter per_segment must be true or false")
    with_saliency = query_flag("saliency", saliency)
    names = [name.strip() for name in lead_names.split(",")] if lead_names else None
    signal = load_npy(body)
    flag = _FLAGS[per_segment.lower()] if per_segment else False
    return prepare(signal, fs_hz, names, flag, with_saliency, max_duration_s=max_duration_s)


def load_npy(body: bytes) -> np.ndarray:
    """A numeric array from ``.npy`` bytes (:func:`ecgfm.records.readers.npy_array`: no pickle, the header checked
    against the data before any allocation).

    Raises:
        BadRequestError: not an ``.npy`` file, a header that does not match the data, or not numbers.
    """
    try:
        return npy_array(body)
    except RecordError as exc:
        message = str(exc)
        raise BadRequestError(f"the body is {message}" if message.startswith("not a NumPy") else message) from None


def file_media_type(content_type: str | None) -> str:
    """The media type of a ``/<post>/file`` body, or :class:`UnsupportedMediaTypeError` (415)."""
    given = (content_type or "").split(";")[0].strip().lower()
    if given not in FILE_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"the body must be an ECG file sent as one of {', '.join(FILE_MEDIA_TYPES)} "
            "(multipart/form-data with the file in the field 'file')"
        )
    return given


def decode_file(
    body: bytes, per_segment: str | None, saliency: str | None = None, *, max_duration_s: float
) -> PreparedRequest:
    """A ``POST /<route>/file`` request: ``body`` is a hospital ECG file (DICOM, HL7 aECG, Philips, GE MUSE,
    SCP-ECG), its format told by its content (:func:`ecgfm.records.formats.read_bytes`); leads beyond the standard 12
    are kept out of the model. Query parameters: ``per_segment`` and ``saliency`` (``true``/``false``).

    Raises:
        BadRequestError: an empty body or an unreadable ``per_segment``.
        ecgfm.records.formats.FormatError: not a readable ECG file (422; the message names the problem, never the
            content).
    """
    if per_segment is not None and per_segment.lower() not in _FLAGS:
        raise BadRequestError("the query parameter per_segment must be true or false")
    with_saliency = query_flag("saliency", saliency)
    if not body:
        raise BadRequestError("the body is empty: send the ECG file as the body or as the multipart field 'file'")
    record = read_bytes(body)
    signal, lead_names = record.model_input()
    flag = _FLAGS[per_segment.lower()] if per_segment else False
    prepared = prepare(signal, record.fs, lead_names, flag, with_saliency, max_duration_s=max_duration_s)
    return replace(prepared, conversion=ConversionReport.model_validate(record.conversion))


# What ecgfm.records.readers reads by suffix (any other file is read by its content, as /<post>/file reads it).
RECORD_FORMATS = {".json": "json", ".csv": "csv", ".npy": "npy", ".hea": "wfdb"}
MAX_UPLOAD_FILES = 8  # a WFDB record is its .hea and one or a few signal files


def decode_record_files(
    files: list[tuple[str, bytes]], fs: str | None, lead_names: str | None
) -> tuple[ECGRecord, str]:
    """A ``POST /decode`` request: the record in the uploaded files and its format (``json``, ``csv``, ``npy``,
    ``wfdb`` or the hospital format), read as ``ecgfm predict`` reads files (:func:`ecgfm.records.read_record`),
    a hospital file exactly as ``/<post>/file`` reads it. ``files`` are (file name, content); several files are one
    WFDB record (its ``.hea`` and the signal files it names). ``fs`` and ``lead_names`` are for ``.csv``/``.npy``.

    Raises:
        BadRequestError: no file, several files without a ``.hea``, a bad file name, or no ``fs`` for .csv/.npy.
        ecgfm.records.formats.FormatError: a file that cannot be read (422; the message names the file, never a path).
    """
    if not files:
        raise BadRequestError(
            "no file: send the record in the multipart field 'file' (WFDB: its .hea and signal files)"
        )
    if len(files) > MAX_UPLOAD_FILES:
        raise BadRequestError(f"at most {MAX_UPLOAD_FILES} files (a WFDB record is its .hea and its signal files)")
    names = [Path(name.replace("\\", "/")).name for name, _ in files]
    if any(not name or name.startswith(".") for name in names):
        raise BadRequestError("every uploaded file needs a name (e.g. record.hea, record.json)")
    headers = [i for i, name in enumerate(names) if name.lower().endswith(".hea")]
    if len(files) > 1 and len(headers) != 1:
        raise BadRequestError("several files must be one WFDB record: its .hea and the signal files it names")
    main = headers[0] if headers else 0
    suffix = Path(names[main]).suffix.lower()
    if suffix not in RECORD_FORMATS:  # a hospital file: told by its content
        record = read_bytes(files[main][1], Path(names[main]).stem)
        return record, record.conversion["format"] if record.conversion else "unknown"
    fs_hz = None
    if fs is not None:
        try:
            fs_hz = float(fs)
        except ValueError:
            raise BadRequestError("the query parameter fs must be a number (Hz)") from None
    elif suffix in (".csv", ".npy"):
        raise BadRequestError(f"{names[main]}: a {suffix} file carries no sampling rate; give fs (Hz), e.g. ?fs=500")
    leads = [name.strip() for name in lead_names.split(",")] if lead_names else None
    with tempfile.TemporaryDirectory(prefix="ecgfm-decode-") as tmp:
        for name, (_, data) in zip(names, files, strict=True):
            (Path(tmp) / name).write_bytes(data)
        try:
            record = read_record(Path(tmp) / names[main], fs=fs_hz, lead_names=leads)
        except RecordError as exc:  # its message starts with the path: keep the file name only
            raise FormatError(str(exc).replace(f"{tmp}/", "")) from None
        except Exception as exc:  # a library's own error on a malformed file (wfdb raises several kinds)
            raise FormatError(
                f"{names[main]}: cannot be read as {RECORD_FORMATS[suffix]} ({type(exc).__name__})"
            ) from None
    bad = [name for name, lead in zip(record.lead_names, record.signal, strict=False) if not np.isfinite(lead).all()]
    if bad:  # as preprocess says it (and JSON cannot carry them)
        raise ECGInputError(
            f"non-finite values (NaN or infinity) in lead{'s' if len(bad) > 1 else ''} {', '.join(bad)}"
        )
    return record, RECORD_FORMATS[suffix]


# ---- HTTP requests -> a bound decoder ---------------------------------------------------------------------------


Decoder = Callable[..., PreparedRequest]  # called on a worker thread with ``max_duration_s``


def json_decoder(fields: dict[str, Any]) -> Decoder:
    """:func:`prepare` bound to the fields of a validated JSON body (:class:`contract.ECGRequest`)."""
    flags = bool(fields.get("per_segment")), bool(fields.get("saliency"))
    return partial(prepare, fields["signal"], fields["fs"], fields.get("lead_names"), *flags)


async def npy_decoder(request: Request) -> Decoder:
    """:func:`decode_npy` bound to a request's body and its query parameters (``fs``, ``lead_names``,
    ``per_segment``, ``saliency``; documented by :data:`serving.openapi.NPY_OPERATION`)."""
    query = request.query_params
    fields = (query.get(name) for name in ("fs", "lead_names", "per_segment", "saliency"))
    return partial(decode_npy, await request.body(), *fields)


def _raise(exc: Exception, **_: Any) -> PreparedRequest:
    """A decoder that raises the error met while reading the request."""
    raise exc


async def multipart_form(request: Request, max_files: int) -> Any:
    """The request's multipart/form-data fields (at most ``max_files`` files), or 400 when it cannot be parsed."""
    try:
        return await request.form(max_files=max_files, max_fields=8)
    except Exception:  # malformed multipart: starlette raises its own kinds
        raise BadRequestError("the multipart/form-data body cannot be parsed") from None


async def file_decoder(request: Request) -> Decoder:
    """:func:`decode_file` bound to the uploaded file (the raw body, or the multipart field ``file``) and the query
    parameters ``per_segment`` and ``saliency``. An error on the way (415, 400) is bound instead, so that it is
    answered like any other."""
    per_segment, saliency = request.query_params.get("per_segment"), request.query_params.get("saliency")
    try:
        media_type = file_media_type(request.headers.get("content-type"))
        if media_type != MULTIPART_MEDIA_TYPE:
            return partial(decode_file, await request.body(), per_segment, saliency)
        form = await multipart_form(request, max_files=1)
        upload = form.get(FILE_FIELD)
        if upload is None:
            raise BadRequestError(f"the multipart/form-data body has no field '{FILE_FIELD}' holding the ECG file")
        body = upload.encode() if isinstance(upload, str) else await upload.read()
        await form.close()
        return partial(decode_file, body, per_segment, saliency)
    except ANSWERED_ERRORS as exc:
        return partial(_raise, exc)


async def uploaded_files(request: Request) -> list[tuple[str, bytes]]:
    """The (name, content) of each multipart field ``file`` of a ``/decode`` request (415, 400 otherwise)."""
    if file_media_type(request.headers.get("content-type")) != MULTIPART_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(
            f"the body must be multipart/form-data with the record file in the field '{FILE_FIELD}'"
        )
    form = await multipart_form(request, max_files=8)
    uploads = [upload for upload in form.getlist(FILE_FIELD) if not isinstance(upload, str)]
    files = [(upload.filename or "", await upload.read()) for upload in uploads]
    await form.close()
    return files

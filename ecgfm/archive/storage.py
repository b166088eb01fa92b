"""Where an ``ecgfm batch`` job reads and writes: a local folder or an object store, through ``pyarrow.fs``.

A location is a local path or a URI ``pyarrow.fs.FileSystem.from_uri`` resolves: ``s3://bucket/prefix`` (AWS S3
and its compatibles: MinIO, Ceph, R2, ...), ``gs://bucket/prefix`` (Google Cloud Storage), ``hdfs://``,
``file://``. Credentials and endpoints come only from the standard environment and files of each store (S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/``,
``AWS_ENDPOINT_URL`` for a compatible server, ``AWS_DEFAULT_REGION``; GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` or the
instance's account, ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` for a compatible server or emulator): a URI that carries
credentials (``s3://KEY:SECRET@bucket``) is refused, so none ever reaches a command line, a log or the output's
metadata.

A record in an object store is copied into a temporary folder of the read task and read from there by the readers
of ``ecgfm predict`` (:func:`fetch_record`): a WFDB record's header and signal files come together.
"""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow.fs as pafs

URI_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
BUCKET_SCHEMES = ("s3", "gs", "gcs")  # one file system per bucket, resolved once (:func:`_bucket`)


class StorageError(ValueError):
    """A location that cannot be used (credentials in the URI, an unknown scheme, an unreachable store)."""


def is_uri(name: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: a location for :func:`pyarrow.fs.FileSystem.from_uri`."""
    return bool(URI_PATTERN.match(name))


@dataclass(frozen=True)
class Location:
    """A file or folder: ``uri`` as the user wrote it (a local path or a URI), resolved through ``pyarrow.fs``."""

    uri: str

    def __post_init__(self) -> None:
        if is_uri(self.uri) and "@" in self.uri.split("://", 1)[1].split("/", 1)[0]:
            raise StorageError(
                f"{self.uri.split('://', 1)[0]}://...: credentials do not go into a URI; set them in the "
                "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, AWS_ENDPOINT_URL for an "
                "S3-compatible server; GOOGLE_APPLICATION_CREDENTIALS for GCS)"
            )

    @classmethod
    def named(cls, uri: str) -> Location:
        """A location the user named (an input, a manifest, a root, the output): as :class:`Location`, and a bucket
        URI with a query string (``s3://bucket/in?endpoint_override=...``) is refused, since it would be read as
        part of the object's name rather than as options (endpoints and options come from the environment)."""
        scheme = uri.split("://", 1)[0].lower() if is_uri(uri) else ""
        if scheme in BUCKET_SCHEMES and "?" in uri:
            raise StorageError(
                f"{scheme}://...: a query string (?...) is not read in a {scheme}:// URI; set the endpoint in the "
                "environment (AWS_ENDPOINT_URL for an S3-compatible server, CLOUD_STORAGE_EMULATOR_ENDPOINT for a "
                "GCS-compatible one) and name the object without it"
            )
        return cls(uri)

    @property
    def remote(self) -> bool:
        """True for an object store (no rename, no folders): anything but the local file system."""
        return not isinstance(self._resolved[0], pafs.LocalFileSystem)

    @cached_property
    def _resolved(self) -> tuple[pafs.FileSystem, str]:
        if not is_uri(self.uri):
            return pafs.LocalFileSystem(), str(Path(self.uri).absolute())
        scheme, rest = self.uri.split("://", 1)
        bucket, _, key = rest.partition("/")
        try:
            if scheme.lower() not in BUCKET_SCHEMES:
                return pafs.FileSystem.from_uri(self.uri)
            filesystem, root = _bucket(f"{scheme}://{bucket}")
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise StorageError(f"{scheme}://{bucket}: {exc}") from exc
        return filesystem, f"{root.rstrip('/')}/{key}" if key else root

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._resolved[0]

    @property
    def path(self) -> str:
        """The path inside :attr:`filesystem` (``bucket/prefix`` for an object store)."""
        return self._resolved[1].rstrip("/") or self._resolved[1]

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def child(self, name: str) -> Location:
        """``name`` (a relative path) below this folder, written as this location is (URI or local path)."""
        if not is_uri(self.uri):
            return Location(str(Path(self.uri) / name))
        return Location(f"{self.uri.rstrip('/')}/{name.lstrip('/')}")

    def parent(self) -> Location:
        if not is_uri(self.uri):
            return Location(str(Path(self.uri).parent))
        scheme, rest = self.uri.rstrip("/").split("://", 1)
        return Location(f"{scheme}://{rest.rsplit('/', 1)[0]}") if "/" in rest else self

    def info(self) -> pafs.FileInfo:
        try:
            return self.filesystem.get_file_info(self.path)
        except OSError as exc:  # an unreachable endpoint, a bucket without access
            raise StorageError(f"{self.uri}: {exc}") from exc

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def files(self, recursive: bool = True) -> list[Location]:
        """The files below this folder (none if it is not one), sorted."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        try:
            infos = self.filesystem.get_file_info(selector)
        except OSError as exc:
            raise StorageError(f"{self.uri}: {exc}") from exc
        prefix = self.path.rstrip("/") + "/"
        names = sorted(
            i.path[len(prefix) :] for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)
        )
        return [self.child(name) for name in names]

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole object: on an object store, it becomes visible only complete (one PUT or a completed
        multipart upload), so a writer killed part-way leaves nothing under this name."""
        with self.filesystem.open_output_stream(self.path) as stream:
            stream.write(data)

    def delete(self) -> None:
        self.filesystem.delete_file(self.path)

    def makedirs(self) -> None:
        """Create the folder locally (an object store has no folders: nothing to do)."""
        if not self.remote:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        return self.uri


@functools.lru_cache(maxsize=16)
def _bucket(uri: str) -> tuple[pafs.FileSystem, str]:
    """The file system of a bucket (or host), resolved once per process: ``from_uri`` asks S3 for the bucket's
    region, one request that a read task would otherwise make for every record."""
    return pafs.FileSystem.from_uri(uri)


def fetch_record(location: Location, folder: Path) -> Path:
    """Copy a record of an object store into ``folder`` and return the local path to read.

    The object itself when it exists; for a WFDB record (a ``.hea``, or a name without suffix as MIMIC-IV-ECG's
    ``record_list.csv`` writes them) every object of the record's folder named ``<stem>.*`` (header and signal
    files), listed in one request. Nothing found: the local path does not exist, and the reader says "no such file".
    """
    stem = posixpath.splitext(location.name)[0] if location.name.lower().endswith(".hea") else location.name
    wanted = [location] if location.is_file() else []
    if not wanted or location.name.lower().endswith(".hea"):
        wanted = [f for f in location.parent().files(recursive=False) if f.name.startswith(f"{stem}.")] or wanted
    for item in wanted:
        (folder / item.name).write_bytes(item.read_bytes())
    return folder / location.name

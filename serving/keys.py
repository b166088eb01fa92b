"""Named API keys: ``ECGFM_API_KEY`` (named ``default``) and the ``name:key`` lines of ``ECGFM_API_KEYS_FILE``.

The file is re-read when it changes (its mtime, size or inode, checked on every request: one ``stat``) or on
SIGHUP to the API worker, so a key is rotated without a restart. A presented key is compared with every key in
constant time (``hmac.compare_digest``), and only a key's name ever leaves this module (log lines, spans, the
audit trail). File format (docs/security.md)::

    # comment lines and blank lines are ignored
    ward-7-cart:3f1c9a0e5b7d4c2a8e6f1b3d5c7a9e0f
    research-pipeline:9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KEY_NAME = "default"  # the name of ECGFM_API_KEY's key
KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_KEY_CHARS = 16  # a key of the file: at least this many characters, no white space

log = logging.getLogger(__name__)


class KeyFileError(ValueError):
    """An API keys file that cannot be used; the message names the file and the line, never a key."""


def parse_keys(text: str, source: str) -> dict[str, str]:
    """``{name: key}`` from the ``name:key`` lines of a keys file (:class:`KeyFileError` for a bad line)."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, key = line.partition(":")
        name, key = name.strip(), key.strip()
        where = f"{source}, line {number}"
        if not colon or not KEY_NAME_PATTERN.fullmatch(name):
            raise KeyFileError(f"{where}: expected 'name:key' with a name of 1-64 letters, digits, '.', '_' or '-'")
        if len(key) < MIN_KEY_CHARS or any(char.isspace() for char in key):
            raise KeyFileError(f"{where}: the key of '{name}' must be at least {MIN_KEY_CHARS} characters, no spaces")
        if name in keys:
            raise KeyFileError(f"{where}: the name '{name}' appears twice")
        if key in keys.values():
            raise KeyFileError(f"{where}: the key of '{name}' is also another name's key")
        keys[name] = key
    if not keys:
        raise KeyFileError(f"{source}: no key in the file (lines 'name:key')")
    return keys


def read_keys_file(path: str | Path) -> dict[str, str]:
    """The keys of ``path`` (:class:`KeyFileError` when it cannot be read or parsed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    return parse_keys(text, str(path))


@dataclass(frozen=True)
class _Loaded:
    keys: tuple[tuple[str, bytes], ...]  # (name, "Bearer <key>")
    signature: tuple[int, int, int] | None  # the file's (mtime_ns, size, inode) when read


class KeyRing:
    """The API keys in force. ``name_of(authorization)`` is the name of the key an ``Authorization`` header
    carries, or None; :attr:`enabled` is False when no key is set (every request passes)."""

    def __init__(self, api_key: str = "", keys_file: str | None = None) -> None:
        self.api_key, self.keys_file = api_key, keys_file
        self._lock = threading.Lock()
        self._reload_requested = True  # read at the first request (check() at start-up)
        self._loaded = _Loaded((), None)  # until then, and if the file never was usable: no key passes

    @property
    def enabled(self) -> bool:
        return bool(self.api_key or self.keys_file)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.keys_file) if self.keys_file else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None

    def _load(self) -> _Loaded:
        signature = self._signature()
        named = read_keys_file(self.keys_file) if self.keys_file else {}
        if self.api_key:
            if DEFAULT_KEY_NAME in named:
                raise KeyFileError(f"{self.keys_file}: the name '{DEFAULT_KEY_NAME}' is ECGFM_API_KEY's; rename it")
            named = {DEFAULT_KEY_NAME: self.api_key, **named}
        return _Loaded(tuple((name, f"Bearer {key}".encode()) for name, key in named.items()), signature)

    def check(self) -> list[str]:
        """The names of the keys, read now (:class:`KeyFileError` when the file cannot be used: start-up stops)."""
        return [name for name, _ in self._load().keys]

    def refresh(self) -> None:
        """Read the keys at the first call, then again when the file changed or a reload was asked (SIGHUP); a
        file that has become unusable is logged (never its keys) and the keys in force are kept."""
        if not self._reload_requested and (not self.keys_file or self._signature() == self._loaded.signature):
            return
        with self._lock:
            self._reload_requested = False
            try:
                self._loaded = self._load()
            except KeyFileError as exc:
                self._loaded = _Loaded(self._loaded.keys, self._signature())  # not retried until it changes again
                log.warning("API keys file not reloaded, the previous keys stay in force: %s", exc)
                return
        log.info("API keys reloaded from %s: %d key(s)", self.keys_file, len(self._loaded.keys))

    def request_reload(self, *_: object) -> None:
        """Re-read the file at the next request (the SIGHUP handler)."""
        self._reload_requested = True

    def install_sighup(self) -> None:
        """SIGHUP to this process re-reads the keys file (only from the main thread; elsewhere a no-op)."""
        if self.keys_file and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self.request_reload)

    def name_of(self, authorization: bytes) -> str | None:
        """The name of the key in ``authorization`` (``Bearer <key>``), compared with every key in constant time."""
        self.refresh()
        found = None
        for name, expected in self._loaded.keys:
            if hmac.compare_digest(authorization, expected) and found is None:
                found = name
        return found

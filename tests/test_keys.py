"""serving.keys: the keys file's format, its reload, and what a presented key is matched to (no server; the server's
side is in tests/test_untrusted_clients.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from serving.keys import DEFAULT_KEY_NAME, KeyFileError, KeyRing, parse_keys

WARD, RESEARCH = "ward-key-0123456789abcdef", "research-key-fedcba9876543210"


def write(path: Path, text: str) -> None:
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_the_file_gives_each_name_its_key() -> None:
    text = f"# keys\n\nward:{WARD}\n  research : {RESEARCH}  \n"
    assert parse_keys(text, "keys.txt") == {"ward": WARD, "research": RESEARCH}


BAD_FILES = {
    "no colon": (f"ward {WARD}\n", "keys.txt, line 1: expected 'name:key'"),
    "bad name": (f"ward 7:{WARD}\n", "keys.txt, line 1: expected 'name:key'"),
    "short key": ("ward:short\n", "line 1: the key of 'ward' must be at least 16 characters"),
    "space in key": ("ward:abc def ghi jkl mno\n", "the key of 'ward' must be at least 16 characters, no spaces"),
    "twice the name": (f"ward:{WARD}\nward:{RESEARCH}\n", "line 2: the name 'ward' appears twice"),
    "one key, two names": (f"ward:{WARD}\nresearch:{WARD}\n", "line 2: the key of 'research' is also another"),
    "empty": ("# nothing\n", "no key in the file"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_refused_naming_the_line_never_the_key(case: str) -> None:
    text, message = BAD_FILES[case]
    with pytest.raises(KeyFileError) as raised:
        parse_keys(text, "keys.txt")
    assert message in str(raised.value)
    assert WARD not in str(raised.value) and "short" not in str(raised.value).replace("characters", "")


def test_a_presented_key_is_matched_to_its_name(tmp_path: Path) -> None:
    write(tmp_path / "keys.txt", f"ward:{WARD}\nresearch:{RESEARCH}\n")
    keys = KeyRing("the-single-key", str(tmp_path / "keys.txt"))
    assert keys.check() == [DEFAULT_KEY_NAME, "ward", "research"]
    assert keys.name_of(f"Bearer {RESEARCH}".encode()) == "research"
    assert keys.name_of(b"Bearer the-single-key") == DEFAULT_KEY_NAME
    assert keys.name_of(WARD.encode()) is None  # without "Bearer "
    assert keys.name_of(f"Bearer {WARD}x".encode()) is None
    assert KeyRing("the-single-key").name_of(b"Bearer the-single-key") == DEFAULT_KEY_NAME
    assert not KeyRing().enabled


def test_a_changed_file_is_read_at_the_next_request_and_a_broken_one_keeps_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.txt"
    write(path, f"ward:{WARD}\n")
    keys = KeyRing(keys_file=str(path))
    assert keys.name_of(f"Bearer {WARD}".encode()) == "ward"
    write(path, f"ward:{RESEARCH}\n")  # rotated
    assert keys.name_of(f"Bearer {WARD}".encode()) is None
    assert keys.name_of(f"Bearer {RESEARCH}".encode()) == "ward"
    with caplog.at_level(logging.WARNING, logger="serving.keys"):
        write(path, "ward:short\n")  # a mistake while rotating: the keys in force stay
        assert keys.name_of(f"Bearer {RESEARCH}".encode()) == "ward"
    assert "not reloaded" in caplog.text and RESEARCH not in caplog.text


def test_the_default_name_belongs_to_the_single_key(tmp_path: Path) -> None:
    write(tmp_path / "keys.txt", f"default:{WARD}\n")
    with pytest.raises(KeyFileError, match="'default' is ECGFM_API_KEY's"):
        KeyRing("the-single-key", str(tmp_path / "keys.txt")).check()


def test_an_unreadable_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot be read"):
        KeyRing(keys_file=str(tmp_path / "missing.txt")).check()


def test_the_key_name_never_the_key_is_on_the_request_span_log_line_and_audit_line(tmp_path: Path) -> None:
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serving import audit
    from serving.contract import KEY_NAME, PUBLIC_PATHS, REQUEST_ID
    from serving.logs import RequestIdLogFilter
    from serving.middleware import KEY_NAME_SPAN_ATTRIBUTE, ApiKeyMiddleware

    write(tmp_path / "keys.txt", f"ward:{WARD}\n")
    seen: dict[str, object] = {}

    async def app(scope: dict, receive: object, send: object) -> None:
        record = logging.LogRecord("x", logging.INFO, "x", 1, "scored", None, None)
        token = REQUEST_ID.set("req-1")
        RequestIdLogFilter().filter(record)
        REQUEST_ID.reset(token)
        seen["log"], seen["key_name"] = record.trace_msg, KEY_NAME.get()

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = ApiKeyMiddleware(app, keys=KeyRing(keys_file=str(tmp_path / "keys.txt")), public_paths=PUBLIC_PATHS)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/info",
        "headers": [(b"authorization", f"Bearer {WARD}".encode())],
    }

    async def run() -> dict:
        with provider.get_tracer("test").start_as_current_span("request"), audit.open_line("/info", "") as line:
            await middleware(scope, None, None)
        return line

    line = asyncio.run(run())
    (span,) = exporter.get_finished_spans()
    assert span.attributes[KEY_NAME_SPAN_ATTRIBUTE] == "ward" == seen["key_name"] == line["key_name"]
    assert seen["log"] == " (request_id=req-1, key=ward)"
    assert WARD not in str(dict(span.attributes)) + str(seen) + str(line)

"""The service's own pages: ``GET /`` (the landing page), the page at ``/ui`` and its files (``web/``: our HTML, CSS
and JS, no library, nothing from another origin), and the bundled sample records it offers."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable
from pathlib import Path

import ecgfm
from serving.contract import RESEARCH_USE, SERVICE_DESCRIPTION
from serving.middleware import ASGIApp, Receive, Scope, Send


def fill_template(template: str, **fields: str) -> str:
    """``template`` with each ``{name}`` replaced by its field, HTML-escaped (CSS braces are left alone)."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", html.escape(value))
    return template


class LandingPageMiddleware:
    """``GET /`` answers with ``html`` (instead of BentoML's API explorer, which loads scripts from other hosts),
    under a Content-Security-Policy that allows nothing but this origin and the page's own inline style (by hash)."""

    def __init__(self, app: ASGIApp, html: str) -> None:
        self.app = app
        self.body = html.encode()
        styles = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
        hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in styles)
        style_src = hashes or "'none'"
        policy = f"default-src 'none'; style-src {style_src}; img-src 'self'; "
        policy += "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        self.headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
            (b"content-security-policy", policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


class StaticFilesMiddleware:
    """``GET`` (or ``HEAD``) of one of ``files``' paths answers that file (its bytes and media type), under a
    Content-Security-Policy that allows scripts, styles, images and requests from this origin only (nothing inline,
    nothing from another host); every other request passes through. The service's page at /ui is served so."""

    POLICY = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )

    def __init__(self, app: ASGIApp, files: dict[str, tuple[bytes, str]]) -> None:
        self.app = app
        self.files = {
            path: (
                body,
                [
                    (b"content-type", media_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"content-security-policy", self.POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-cache"),
                ],
            )
            for path, (body, media_type) in files.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.files.get(scope.get("path")) if scope["type"] == "http" else None
        if found is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, headers = found
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


MEDIA_TYPES_BY_SUFFIX = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".hea": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


def static_files(directory: Path, prefix: str, names: Iterable[str] | None = None) -> dict[str, tuple[bytes, str]]:
    """``{prefix + name: (bytes, media type)}`` for the files of ``directory`` (or those of ``names``), read now;
    nothing when the directory is absent."""
    if not directory.is_dir():
        return {}
    paths = [directory / name for name in names] if names is not None else sorted(directory.iterdir())
    return {
        prefix + path.name: (
            path.read_bytes(),
            MEDIA_TYPES_BY_SUFFIX.get(path.suffix.lower(), "application/octet-stream"),
        )
        for path in paths
        if path.is_file()
    }


# ---- this service's pages ---------------------------------------------------------------------------------------

REPO_DIR = Path(__file__).resolve().parents[1]
WEB_DIR = Path(__file__).resolve().parent / "web"  # the pages' own HTML, CSS and JS
LANDING_PAGE = fill_template(
    (WEB_DIR / "landing.html").read_text(),
    version=ecgfm.__version__,
    description=SERVICE_DESCRIPTION,
    research_use=RESEARCH_USE,
)
# The page at /ui (docs/ui.md) and its files are public: they hold no data, and every request the page makes carries
# the key. The bundled records it offers (sample_data/, under /ui/samples/) are behind the key like any other data.
UI_PAGE = fill_template((WEB_DIR / "ui.html").read_text(), research_use=RESEARCH_USE).encode()
UI_ASSETS = ("ui.js", "ecg.js", "ui.css", "favicon.svg")
UI_FILES = {"/ui": (UI_PAGE, "text/html; charset=utf-8")} | static_files(WEB_DIR, "/ui/", UI_ASSETS)
SAMPLE_FILES = static_files(REPO_DIR / "sample_data", "/ui/samples/")

"""The page at /ui in a real browser (headless Chromium driven by Playwright) against the real server.

Each browser test uploads real files (``../shared/data``, ``sample_data/``) through the page's file input and
checks that what the page shows equals what the API answers for the same file, that every request the page makes
goes to the service (anything else is aborted and fails the test) and that the browser reports no error (a
Content-Security-Policy violation is one). What the tracing draws over the signal (the saliency band, the R-peak
marks, the 10 s window, which lead each panel shows) is read from ``ECGTracing.last`` (serving/web/ecg.js) and the
canvas's ``data-`` attributes, not from pixels. Screenshots go to the test's tmp dir and to ``build/ui-screenshots/``.

Without Chromium or Playwright the browser tests are skipped, saying why; under CI (``CI=true``) they fail instead
(``.ci/run`` installs Debian's ``chromium``; Playwright is pinned in requirements-dev.txt).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ecgfm.records.readers import read_record
from interpreter.cli import heart_rate_of
from interpreter.findings import interpret
from tests.conftest import DATA_DIR, REPO_DIR, TWELVE_LEAD_RECORDS, bentoml_server

pytestmark = pytest.mark.server

SCREENSHOT_DIR = REPO_DIR / "build" / "ui-screenshots"
FORMATS_DIR = DATA_DIR / "formats"
SAMPLES_DIR = REPO_DIR / "sample_data"
HOSPITAL_FILES = [
    FORMATS_DIR / "dicom" / "ecgtoolkit_Example.dcm",
    FORMATS_DIR / "ge_muse" / "ecg2dcm_guangxi_teaching_sinus_rhythm.xml",
    FORMATS_DIR / "hl7_aecg" / "hl7_Example_aECG.xml",
    FORMATS_DIR / "philips_sierra" / "sierra_129DYPRG.XML",
    FORMATS_DIR / "scp_ecg" / "ecgtoolkit_Example.scp",
]
API_KEY = "ui-test-key-4f1c"
TIMEOUT_MS = 120_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing(reason: str) -> None:
    """Skip outside CI; fail under CI, where the browser must be there (.ci/run installs it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_missing("Playwright is not installed (pip install -r requirements-dev.txt)")
    if CHROMIUM is None:
        browser_missing("no Chromium on PATH (apt-get install chromium; .ci/run installs it under CI)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def keyed_demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with demo weights and an API key."""
    log_path = tmp_path_factory.mktemp("keyed-demo") / "server.log"
    with bentoml_server({"ECGFM_DEMO": "1", "ECGFM_API_KEY": API_KEY}, log_path, ready_path="/health") as url:
        yield url


class Visit:
    """One page in its own browser context: every request it makes, and every error the browser reports."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page, self.origin = page, origin
        self.requests: list[Any] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def foreign_requests(self) -> list[str]:
        return [r.url for r in self.requests if not r.url.startswith(self.origin + "/")]

    def upload(self, *paths: Path) -> None:
        self.page.set_input_files("#file", [str(p) for p in paths])

    def wait_until_done(self) -> None:
        self.page.wait_for_selector("body[data-state]", timeout=TIMEOUT_MS)
        state = self.page.get_attribute("body", "data-state")
        assert state == "done", self.page.inner_text("#error")

    def shown_probabilities(self) -> dict[str, tuple[str, float]]:
        """label -> (the number shown, the full value kept beside it)."""
        rows = self.page.query_selector_all("#prob-table tbody tr")
        return {
            row.get_attribute("data-label"): (
                row.query_selector("td.num").inner_text(),
                float(row.query_selector("td.num").get_attribute("data-probability")),
            )
            for row in rows
        }

    def fact(self, term: str) -> str:
        """The value the page lists for ``term`` (or ``term (...)``) under 'What the service read'."""
        facts = self.page.evaluate(
            "[...document.querySelectorAll('#record-facts dt')].map(dt => [dt.textContent, dt.nextSibling.textContent])"
        )
        (value,) = [dd for dt, dd in facts if dt == term or dt.startswith(term + " (")]
        return value

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        path = tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOT_DIR / path.name)
        return path


@contextlib.contextmanager
def visit(browser: Any, origin: str, width: int = 1280, height: int = 800) -> Iterator[Visit]:
    """The page at ``origin``/ui; a request anywhere else is aborted (so nothing leaves the machine) and recorded."""
    context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
    context.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(origin + "/") else route.abort()
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    seen = Visit(page, origin)
    page.goto(origin + "/ui", wait_until="networkidle")
    try:
        yield seen
    finally:
        context.close()
    assert seen.foreign_requests() == []


def clinical(url: str, signal: Any, fs: float, lead_names: list[str], headers: dict | None = None) -> dict:
    body = {"signal": signal, "fs": fs, "lead_names": lead_names}
    response = httpx.post(url + "/clinical", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def expected_band(saliency: dict, duration_s: float) -> list[dict]:
    """The API's saliency as the page must draw it: step i of segment k covers [start_k + i·step_s, + step_s),
    cut at the record's end; the steps of a padded short record after its end are left out (docs/api.md)."""
    spans = []
    for k, (origin, row) in enumerate(zip(saliency["segment_start_s"], saliency["values"], strict=True)):
        for i, value in enumerate(row):
            start = origin + i * saliency["step_s"]
            if start < duration_s - 1e-9:
                spans.append({"segment": k, "step": i, "value": value, "start": start,
                              "end": min(start + saliency["step_s"], duration_s)})  # fmt: skip
    return spans


def span_times(spans: list[dict]) -> list[float]:
    return [t for span in spans for t in (span["start"], span["end"])]


def assert_band_is(drawn: list[dict], expected: list[dict], record_band: list[dict]) -> None:
    """``drawn`` is ``expected`` (steps, the API's values, times), its shade on one colour scale over the whole
    record (``record_band``'s min..max, every segment together: not the quickstart's per-segment picture)."""
    assert [(s["segment"], s["step"]) for s in drawn] == [(s["segment"], s["step"]) for s in expected]
    assert [s["value"] for s in drawn] == [s["value"] for s in expected]  # the API's floats, exactly
    assert span_times(drawn) == pytest.approx(span_times(expected), abs=1e-9)
    low, high = min(s["value"] for s in record_band), max(s["value"] for s in record_band)
    levels = [(s["value"] - low) / (high - low) for s in expected]
    assert [s["level"] for s in drawn] == pytest.approx(levels, abs=1e-12)


def page_posts(seen: Visit, route: str) -> list[tuple[dict, Any]]:
    """The JSON bodies the page posted to ``route``, each with the request (its response: ``.response()``)."""
    return [(json.loads(r.post_data), r) for r in seen.requests if r.method == "POST" and r.url == seen.origin + route]


def assert_page_shows(seen: Visit, probabilities: dict[str, float]) -> None:
    shown = seen.shown_probabilities()
    assert list(shown) == sorted(probabilities, key=probabilities.get, reverse=True)  # sorted, highest first
    assert {label: text for label, (text, _) in shown.items()} == {
        label: f"{p:.4f}" for label, p in probabilities.items()
    }
    assert {label: value for label, (_, value) in shown.items()} == probabilities  # the API's float, exactly


# ---- the page and its files, without a browser -----------------------------------------------------------------


def test_the_page_and_its_files_come_from_the_service_under_a_self_only_policy(server_url: str) -> None:
    page = httpx.get(server_url + "/ui", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert {"/ui/ui.js", "/ui/ecg.js", "/ui/ui.css"} <= set(assets)
    for asset in (a for a in assets if a.startswith("/ui/")):
        response = httpx.get(server_url + asset, timeout=30)
        assert response.status_code == 200, asset
        text = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a resource
        assert "http://" not in text and "https://" not in text  # nothing from another host
    assert all(a.startswith("/") for a in assets)  # every link stays on this origin
    assert "Research use only" in page.text


def test_every_bundled_sample_the_page_offers_is_served(server_url: str) -> None:
    script = (REPO_DIR / "serving" / "web" / "ui.js").read_text()
    offered = {name for files in re.findall(r"files: \[([^\]]+)\]", script) for name in re.findall(r'"([^"]+)"', files)}
    assert "JS36330.hea" in offered and "JS36330.npy" in offered
    for name in sorted(offered):
        response = httpx.get(f"{server_url}/ui/samples/{name}", timeout=30)
        assert response.status_code == 200 and response.content == (SAMPLES_DIR / name).read_bytes(), name


def test_decode_answers_the_record_as_the_cli_reads_it(server_url: str) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in (SAMPLES_DIR / "JS36330.hea", SAMPLES_DIR / "JS36330.mat")]
    decoded = httpx.post(server_url + "/decode", files=files, timeout=60).json()
    record = read_record(SAMPLES_DIR / "JS36330.hea")
    assert (decoded["format"], decoded["fs"], decoded["lead_names"]) == ("wfdb", record.fs, record.lead_names)
    assert decoded["signal"] == record.signal.tolist() and decoded["duration_s"] == 10.0


def test_decode_errors_name_the_file_never_a_server_path(server_url: str) -> None:
    response = httpx.post(server_url + "/decode", files={"file": ("broken.json", b'{"signal": [[1, 2]]}')})
    assert response.status_code == 422
    assert response.json()["error"] == "broken.json: a JSON record needs an 'fs' field (sampling rate in Hz)"
    response = httpx.post(server_url + "/decode", json={"signal": []})
    assert response.status_code == 415


def test_interpret_answers_what_the_interpreter_reports(server_url: str) -> None:
    record = read_record(SAMPLES_DIR / "JS06908.json")
    probabilities = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)["probabilities"]
    body = {"signal": record.signal.tolist(), "fs": record.fs, "lead_names": record.lead_names}
    report = httpx.post(server_url + "/interpret", json=body | {"probabilities": probabilities}, timeout=60).json()
    expected = interpret(probabilities, {k: v for k, v in heart_rate_of(record).items() if k != "record"})
    assert report["heart_rate"]["heart_rate_bpm"] == expected.heart_rate["heart_rate_bpm"]
    assert (report["severity"], report["severity_reasons"]) == (expected.severity, expected.severity_reasons)
    assert [(f["label"], f["rules"]) for f in report["findings"]] == [
        (f.label, f.rules) for f in expected.reported_findings()
    ]
    missing = httpx.post(server_url + "/interpret", json={"probabilities": {"Sinus rhythm": 0.5}}, timeout=60)
    assert missing.status_code == 400 and "missing" in missing.json()["detail"][0]["msg"]


# ---- in the browser ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [TWELVE_LEAD_RECORDS[0], "ptbdb_s0010_re_first10s.json"])
def test_a_json_record_shows_the_apis_probabilities_and_the_heart_rate(
    browser: Any, server_url: str, tmp_path: Path, name: str
) -> None:
    path = DATA_DIR / name
    record = read_record(path)
    expected = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)
    bpm = heart_rate_of(record)["heart_rate_bpm"]  # as `python -m interpreter hr` measures it
    with visit(browser, server_url) as seen:
        seen.upload(path)
        seen.wait_until_done()
        assert_page_shows(seen, expected["probabilities"])
        assert seen.page.inner_text("#heart-rate") == f"{round(bpm)} bpm"
        assert float(seen.page.get_attribute("#heart-rate", "data-bpm")) == bpm
        assert seen.fact("Segments").startswith(
            f"{expected['n_segments']} × 5 s, {expected['used_duration_s']:g} s used"
        )
        assert seen.fact("Sampling rate") == f"{record.fs:g} Hz"
        assert seen.page.locator("#severity").inner_text().lower() in ("normal", "borderline", "abnormal", "critical")
        assert seen.page.locator(".rules").count() >= 1  # each finding names its rules (T1, H1, ...)
        assert seen.page.is_hidden("#demo-banner")  # the parity checkpoints are not demo weights
        seen.screenshot(f"json-{path.stem}-1280x800", tmp_path)
        assert seen.errors == []


@pytest.mark.parametrize("path", HOSPITAL_FILES, ids=lambda p: p.parent.name)
def test_a_hospital_file_shows_what_the_file_routes_answer(
    browser: Any, server_url: str, tmp_path: Path, path: Path
) -> None:
    answer = httpx.post(
        server_url + "/clinical/file", content=path.read_bytes(), headers={"content-type": "application/octet-stream"}
    )
    assert answer.status_code == 200, answer.text
    expected = answer.json()
    with visit(browser, server_url) as seen:
        seen.upload(path)
        seen.wait_until_done()
        assert_page_shows(seen, expected["probabilities"])
        assert re.fullmatch(r"\d+ bpm|not measured", seen.page.inner_text("#heart-rate"))
        conversion = expected["conversion"]
        assert seen.fact("Format") == conversion["format"]
        assert seen.fact("Derived leads") == (", ".join(conversion["derived_leads"]) or "none")
        trimmed = [f"{t['what']}, {t['start_s']:g}–{t['end_s']:g} s" for t in conversion["trimmed"]]
        assert seen.fact("Trimmed") == (", ".join(trimmed) or "none")
        seen.screenshot(f"file-{path.parent.name}-1280x800", tmp_path)
        assert seen.errors == []


# The standard layout (docs/ui.md), written out here rather than read from ECGTracing.LAYOUT: rows of four 2.5 s
# columns, then the 10 s lead II rhythm strip.
STANDARD_PANELS = [["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]]


def test_each_panel_draws_the_lead_it_is_labelled_with(browser: Any, server_url: str, tmp_path: Path) -> None:
    """A record whose leads are told apart by their height: lead j of the standard order has a 40 ms spike of
    (j + 1) × 0.1 mV every second on a flat line, and the file lists the leads in another order (reversed, as a
    file may). Each panel must be labelled as the standard layout places it and draw exactly its lead's spikes."""
    fs, seconds = 500, 10
    standard = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    height = {lead: round(0.1 * (j + 1), 1) for j, lead in enumerate(standard)}
    spike = 1 - abs(np.arange(-10, 11)) / 10  # a triangle, 1 at its centre, 40 ms wide at 500 Hz
    flat = np.zeros(fs * seconds)
    for beat in range(seconds):
        centre = beat * fs + 200
        flat[centre - 10 : centre + 11] = spike
    in_file = list(reversed(standard))
    path = tmp_path / "leads_told_apart.json"
    path.write_text(json.dumps({"fs": fs, "lead_names": in_file,
                                "signal": [(flat * height[lead]).round(6).tolist() for lead in in_file]}))  # fmt: skip
    with visit(browser, server_url) as seen:
        seen.upload(path)
        seen.wait_until_done()
        panels = seen.page.evaluate("ECGTracing.last.panels")
        assert [(p["row"], p["column"], p["lead"]) for p in panels] == [
            *[(r, c, lead) for r, row in enumerate(STANDARD_PANELS) for c, lead in enumerate(row)],
            ("rhythm", 0, "II"),
        ]
        for panel in panels:
            t0, t1 = (0.0, 10.0) if panel["row"] == "rhythm" else (panel["column"] * 2.5, panel["column"] * 2.5 + 2.5)
            trace = panel["trace"]
            assert (panel["t0"], panel["t1"], trace["first"], trace["end"]) == (t0, t1, t0 * fs, t1 * fs)
            # the lead's own spikes above its flat line (the median), no other lead's
            assert (trace["low"], trace["high"]) == pytest.approx((0.0, height[panel["lead"]]), abs=1e-9), panel
        seen.screenshot("leads-told-apart", tmp_path)
        assert seen.errors == []


def test_a_wfdb_record_is_chosen_as_its_header_and_signal_file(browser: Any, server_url: str, tmp_path: Path) -> None:
    record = read_record(SAMPLES_DIR / "JS36330.hea")
    expected = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)
    with visit(browser, server_url) as seen:
        seen.upload(SAMPLES_DIR / "JS36330.hea", SAMPLES_DIR / "JS36330.mat")
        seen.wait_until_done()
        assert_page_shows(seen, expected["probabilities"])
        assert seen.fact("Format") == "wfdb"


def test_a_csv_without_its_rate_shows_the_apis_error_then_reads_with_it(
    browser: Any, server_url: str, tmp_path: Path
) -> None:
    csv = SAMPLES_DIR / "JS36330.csv"
    refused = httpx.post(server_url + "/decode", files={"file": (csv.name, csv.read_bytes())}, timeout=60)
    record = read_record(csv, fs=500)
    expected = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)
    with visit(browser, server_url) as seen:
        seen.upload(csv)
        seen.page.wait_for_selector("body[data-state=error]")
        assert seen.page.inner_text("#error .api-message") == refused.json()["error"]  # as the API words it
        assert seen.page.inner_text("#error .where") == f"POST /decode answered {refused.status_code}"
        seen.screenshot("csv-without-fs-error", tmp_path)
        seen.page.evaluate("document.body.removeAttribute('data-state')")
        seen.page.get_by_label("Sampling rate (Hz) for .csv/.npy").fill("500")
        seen.page.keyboard.press("Tab")  # a new rate reads the chosen file again
        seen.wait_until_done()
        assert_page_shows(seen, expected["probabilities"])


def test_an_unreadable_file_shows_the_error_exactly_as_the_api_words_it(
    browser: Any, server_url: str, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(HOSPITAL_FILES[0].read_bytes()[:400])
    answer = httpx.post(server_url + "/clinical/file", content=truncated.read_bytes(),
                        headers={"content-type": "application/dicom"})  # fmt: skip
    assert answer.status_code == 422
    with visit(browser, server_url) as seen:
        seen.upload(truncated)
        seen.page.wait_for_selector("body[data-state=error]")
        assert seen.page.inner_text("#error .api-message") == answer.json()["error"]
        assert seen.page.is_hidden("#results")


def test_a_bundled_sample_is_chosen_and_loaded_with_the_keyboard(browser: Any, server_url: str, tmp_path: Path) -> None:
    record = read_record(SAMPLES_DIR / "JS36330.npy", fs=500)
    expected = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)
    with visit(browser, server_url) as seen:
        page = seen.page
        page.get_by_label("or a bundled sample").focus()  # every control is found by its label
        page.select_option("#sample", label="JS36330 · the same as NumPy .npy (500 Hz)")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "sample-load"
        page.keyboard.press("Enter")
        seen.wait_until_done()
        assert_page_shows(seen, expected["probabilities"])
        assert page.input_value("#fs") == "500"
        for name in ("Choose or drop an ECG file", "Sampling rate (Hz) for .csv/.npy"):
            assert page.get_by_label(name).count() == 1


def test_with_an_api_key_the_page_asks_for_it_and_sends_it_as_the_bearer_header(
    browser: Any, keyed_demo_url: str, tmp_path: Path
) -> None:
    path = SAMPLES_DIR / "JS01048.json"
    with visit(browser, keyed_demo_url) as seen:  # the page itself is public: it holds no data
        page = seen.page
        page.wait_for_selector("#error:not([hidden])")
        assert page.inner_text("#error .where") == "GET /info answered 401"
        assert page.inner_text("#error .api-message").startswith("missing or wrong API key")
        page.get_by_label("API key (when the service has ECGFM_API_KEY)").fill(API_KEY)
        page.click("#key-save")
        page.wait_for_selector("#demo-banner:not([hidden])")  # /info, now with the key, says demo weights
        seen.upload(path)
        seen.wait_until_done()
        assert page.evaluate("sessionStorage.getItem('ecgfm-api-key')") == API_KEY
        assert page.evaluate("localStorage.length") == 0
        record = read_record(path)
        expected = clinical(keyed_demo_url, record.signal.tolist(), record.fs, record.lead_names,
                            headers={"authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert_page_shows(seen, expected["probabilities"])
        posts = [r for r in seen.requests if r.method == "POST"]
        assert {r.url.split("?")[0].removeprefix(keyed_demo_url) for r in posts} == {
            "/decode",
            "/clinical",
            "/interpret",
        }
        assert all(r.headers.get("authorization") == f"Bearer {API_KEY}" for r in posts)
        seen.screenshot("api-key-demo-weights", tmp_path)


def test_at_phone_width_nothing_but_the_tracing_scrolls_sideways(browser: Any, server_url: str, tmp_path: Path) -> None:
    with visit(browser, server_url, width=390, height=844) as seen:
        seen.upload(SAMPLES_DIR / "A1041.json")  # 17 s: the window control is shown too
        seen.wait_until_done()
        assert seen.page.is_visible("#window-start") and seen.page.is_visible("#show-saliency")
        assert seen.page.evaluate("document.documentElement.scrollWidth") <= 390
        assert seen.page.evaluate("document.querySelector('#ecg').clientWidth") > 390  # the grid stays readable
        seen.screenshot("phone-390x844", tmp_path)
        assert seen.errors == []


def test_the_landing_page_loads_without_an_error_its_icon_included(browser: Any, server_url: str) -> None:
    """A browser asks for /favicon.ico unless the page names its icon; the service has none there (a 404, logged
    as an error in the console of every visitor)."""
    context = browser.new_context(service_workers="block")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(server_url + "/", wait_until="networkidle")
        page.wait_for_timeout(1500)  # the icon is fetched after the page has loaded
        assert page.title().startswith("ecgfm-serve") and errors == []
    finally:
        context.close()


# ---- over the tracing: saliency, the whole record, R peaks -------------------------------------------------------


def test_a_long_record_shows_the_apis_saliency_its_r_peaks_and_every_second(
    browser: Any, server_url: str, tmp_path: Path
) -> None:
    """A1041 (17 s, 3 segments): the band is the API's saliency on one scale, up to the model's last step (the 2 s
    tail is in no segment); the last 10 s can be shown; the marks are the interpreter's R peaks; hiding works."""
    path = SAMPLES_DIR / "A1041.json"
    record = read_record(path)
    duration = record.signal.shape[1] / record.fs
    plain = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)
    body = {"signal": record.signal.tolist(), "fs": record.fs, "lead_names": record.lead_names, "saliency": True}
    asked = httpx.post(server_url + "/clinical", json=body, timeout=120).json()["saliency"]
    hr = heart_rate_of(record)  # as `python -m interpreter hr` measures it
    beats = [(p, p / record.fs) for p in hr["r_peaks"]]  # (sample, s)
    with visit(browser, server_url) as seen:
        page = seen.page
        seen.upload(path)
        seen.wait_until_done()
        # two /clinical requests: the plain one for the numbers, the saliency one for the drawing only
        posts = page_posts(seen, "/clinical")
        assert sorted(b.get("saliency", False) for b, _ in posts) == [False, True]
        assert_page_shows(seen, plain["probabilities"])
        (answer,) = [r.response().json()["saliency"] for b, r in posts if b.get("saliency")]
        assert json.dumps(answer["segment_start_s"]) == "[0.0, 5.0, 10.0]" and answer["step_s"] == 0.032
        for got, want in zip(answer["values"], asked["values"], strict=True):  # the page sent this record
            assert got == pytest.approx(want, abs=1e-6)
        band = page.evaluate("ECGTracing.last.band")
        expected = expected_band(answer, duration)
        assert_band_is(band["spans"], expected, expected)
        assert len(expected) == 3 * 156 and band["spans"][0]["start"] == 0
        assert band["end"] == pytest.approx(14.992) and max(s["end"] for s in band["spans"]) <= duration
        assert page.inner_text("#saliency-tail").startswith("No shading after 14.99 s")
        note = page.inner_text("#saliency-note")
        assert "where ECG-FM attended" in note and "not causation" in note and page.is_visible("#saliency-note")
        assert page.is_visible("#saliency-legend")
        canvas = page.locator("#ecg")
        assert (canvas.get_attribute("data-saliency"), canvas.get_attribute("data-window-start")) == ("shown", "0")
        in_window = [s for s in expected if s["start"] < 10]
        assert_band_is(page.evaluate("ECGTracing.last.saliency"), in_window, expected)
        lead = hr["lead"]
        assert page.inner_text("#peaks-text") == (
            f" R peaks: the {len(beats)} beats the interpreter detected in lead {lead} (the heart rate's), marked on"
            f" the rhythm strip and on {lead}'s panel."
        )
        column = next(c for row in page.evaluate("ECGTracing.LAYOUT") for c, name in enumerate(row) if name == lead)

        def assert_marks(start: float) -> None:
            marks = page.evaluate("ECGTracing.last.peaks")
            rhythm = [m["sample"] for m in marks if m["row"] == "rhythm"]
            assert rhythm == [p for p, t in beats if start <= t < start + 10]
            on_lead = [m["sample"] for m in marks if m["row"] == "panel"]
            t0, t1 = start + column * 2.5, start + (column + 1) * 2.5
            assert on_lead == [p for p, t in beats if t0 <= t < t1]
            assert all(m["lead"] == lead for m in marks if m["row"] == "panel")
            assert canvas.get_attribute("data-r-peaks") == str(len(rhythm))

        assert_marks(0)
        shown = set(m["sample"] for m in page.evaluate("ECGTracing.last.peaks"))
        seen.screenshot("saliency-A1041-0-10s", tmp_path)

        page.click("#window-later")  # the last 10 s: 7-17 s
        assert (canvas.get_attribute("data-window-start"), canvas.get_attribute("data-window-end")) == ("7", "17")
        assert page.inner_text("#tracing-caption") == "· 7–17 s of 17 s"
        assert page.is_disabled("#window-later") and page.is_enabled("#window-earlier")
        assert_marks(7)
        shown |= set(m["sample"] for m in page.evaluate("ECGTracing.last.peaks"))
        assert shown == set(hr["r_peaks"])  # every beat of the record can be seen
        assert_band_is(page.evaluate("ECGTracing.last.saliency"), [s for s in expected if s["end"] > 7], expected)
        seen.screenshot("saliency-A1041-7-17s", tmp_path)
        page.fill("#window-start", "3.5")  # the slider: any start
        assert canvas.get_attribute("data-window-start") == "3.5"
        assert_marks(3.5)

        image = page.evaluate("document.getElementById('ecg').toDataURL()")
        page.get_by_label("Show saliency (where the model attended)").uncheck()
        assert canvas.get_attribute("data-saliency") == "hidden" and page.is_hidden("#saliency-legend")
        assert page.evaluate("ECGTracing.last.saliency") == []
        assert page.evaluate("document.getElementById('ecg').toDataURL()") != image
        seen.screenshot("saliency-hidden-A1041", tmp_path)
        page.get_by_label("Show saliency (where the model attended)").check()
        assert page.evaluate("document.getElementById('ecg').toDataURL()") == image
        assert_page_shows(seen, plain["probabilities"])
        assert seen.errors == []


def test_a_record_shorter_than_5_s_has_no_saliency_drawn_after_its_end(
    browser: Any, server_url: str, tmp_path: Path
) -> None:
    """3.5 s of JS36330: one padded segment of 156 steps; the 46 steps after the end are padding, not drawn."""
    source = json.loads((SAMPLES_DIR / "JS36330.json").read_text())
    short = tmp_path / "JS36330_first3.5s.json"
    short.write_text(json.dumps(source | {"signal": [lead[:1750] for lead in source["signal"]]}))
    record = read_record(short)
    body = {"signal": record.signal.tolist(), "fs": record.fs, "lead_names": record.lead_names, "saliency": True}
    answer = httpx.post(server_url + "/clinical", json=body, timeout=120).json()
    assert answer["padded"] and len(answer["saliency"]["values"][0]) == 156
    with visit(browser, server_url) as seen:
        seen.upload(short)
        seen.wait_until_done()
        band = seen.page.evaluate("ECGTracing.last.band")
        assert len(band["spans"]) == math.ceil(3.5 / 0.032) == 110
        assert band["spans"][-1]["start"] == pytest.approx(109 * 0.032) and band["end"] == 3.5  # the last step, cut
        (saliency,) = [r.response().json()["saliency"] for b, r in page_posts(seen, "/clinical") if b.get("saliency")]
        assert_band_is(band["spans"], expected_band(saliency, 3.5), expected_band(saliency, 3.5))
        assert seen.page.is_hidden("#window-box")  # nothing beyond what is drawn
        assert seen.page.inner_text("#tracing-caption") == "· 3.5 s"
        seen.screenshot("saliency-short-3.5s", tmp_path)
        assert seen.errors == []


def test_when_the_saliency_request_fails_the_page_still_shows_the_ecg_and_the_numbers(
    browser: Any, server_url: str, tmp_path: Path
) -> None:
    path = SAMPLES_DIR / "JS06908.json"
    record = read_record(path)
    expected = clinical(server_url, record.signal.tolist(), record.fs, record.lead_names)
    refusal = {"error": "saliency is not available here (refused by the test)"}

    def refuse_saliency(route: Any) -> None:  # the plain /clinical goes to the real server
        if json.loads(route.request.post_data).get("saliency"):
            route.fulfill(status=503, json=refusal)
        else:
            route.continue_()

    with visit(browser, server_url) as seen:
        seen.page.route(f"{server_url}/clinical", refuse_saliency)
        seen.upload(path)
        seen.wait_until_done()
        assert_page_shows(seen, expected["probabilities"])
        assert seen.page.inner_text("#heart-rate") == f"{round(heart_rate_of(record)['heart_rate_bpm'])} bpm"
        assert seen.page.inner_text("#saliency-state") == (
            f"Saliency is unavailable: POST /clinical answered 503 ({refusal['error']}). "
            "The tracing and the numbers are not affected."
        )
        assert seen.page.get_attribute("#ecg", "data-saliency") == "unavailable"
        assert seen.page.evaluate("ECGTracing.last.saliency") == [] and seen.page.is_disabled("#show-saliency")
        assert seen.page.evaluate("ECGTracing.last.peaks.length") > 0  # the tracing is drawn, its beats marked
        seen.screenshot("saliency-unavailable", tmp_path)
        assert all("status of 503" in e for e in seen.errors), seen.errors  # only the refused request's log line


def test_the_page_shows_each_loaded_probe_beside_the_labels(browser: Any, tmp_path: Path) -> None:
    """A probe in ECGFM_PROBES_DIR (random coefficients on the demo weights' sha256: the page shows what the API
    answers, whatever the probe): its table lists each target with the probability of POST /probes/<name>."""
    import numpy as np

    from ecgfm.network.checkpoint import file_sha256, load_checkpoint
    from ecgfm.network.demo import write_demo_checkpoints
    from ecgfm.probes.probe import Probe, save_probe

    pretrained, finetuned = write_demo_checkpoints(tmp_path / "demo", size="small")
    dim = load_checkpoint(pretrained).config.embed_dim
    rng = np.random.default_rng(0)
    summary = {"records": 21, "targets": {"AF": {"cv_auroc": 0.75}}}
    coef = rng.normal(size=(2, dim)) * 0.1
    probe = Probe("site_af", ("AF", "LVH"), coef, np.zeros(2), np.zeros(dim), np.ones(dim), file_sha256(pretrained),
                  True, summary)  # fmt: skip
    (tmp_path / "probes").mkdir()
    save_probe(probe, tmp_path / "probes")
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(pretrained),
        "ECGFM_FINETUNED_CHECKPOINT": str(finetuned),
        "ECGFM_PROBES_DIR": str(tmp_path / "probes"),
    }
    with bentoml_server(env, tmp_path / "server.log") as url, visit(browser, url) as seen:
        seen.upload(DATA_DIR / "JS06908.json")
        seen.wait_until_done()
        ((body, request),) = page_posts(seen, "/probes/site_af")
        answer = request.response().json()
        direct = httpx.post(url + "/probes/site_af", json=body, timeout=120).json()
        assert answer["probe"] == direct["probe"] and answer["demo"] is True
        rows = seen.page.query_selector_all("#probes table[data-probe='site_af'] tr[data-target]")
        shown = {row.get_attribute("data-target"): row.query_selector("td.num") for row in rows}
        assert list(shown) == ["AF", "LVH"]
        for target, cell in shown.items():
            p = answer["probe"]["probabilities"][target]
            assert float(cell.get_attribute("data-probability")) == p and cell.inner_text() == f"{p:.4f}"
        assert "cross-validated AUROC 0.750" in seen.page.inner_text("#probes")
        assert "site_af (demo weights) — fit on 21 records" in seen.page.inner_text("#probes")
        assert seen.page.is_visible("#probes-card") and seen.errors == []
        seen.screenshot("probes-1280x800", tmp_path)

"""The operator's metrics on a real server (docs/operations.md, "Metrics"): known traffic in, the same counts out of
``/metrics``; the Grafana dashboard and the Prometheus rules name only metrics the server exports.

One server for the module (small held-out models, an API key, a 2 MB body limit); the traffic is sent once, then
``/metrics`` is scraped once and parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import FINETUNED_CKPT, PRETRAINED_CKPT, REPO_DIR, load_json_record
from tests.launcher import ServerProcess, bentoml_command, free_port, server_env

pytestmark = pytest.mark.server

DASHBOARD = REPO_DIR / "docs" / "grafana" / "ecgfm-dashboard.json"
ALERTS = REPO_DIR / "docs" / "prometheus" / "ecgfm-alerts.yml"
SCRAPE_CONFIG = REPO_DIR / "docs" / "prometheus" / "prometheus.yml"
OPERATIONS = REPO_DIR / "docs" / "operations.md"
KEY = "metrics-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY_BYTES = 2_000_000
# Sent as the request ID of every request, as an unknown key of a JSON body and in the path of an unknown route:
# only BentoML's endpoint label of that unknown path may carry it (the example scrape config drops that series).
MARKER = "zz-patient-7731"
UNKNOWN_PATH = f"/records/{MARKER}"

# (route, record, seconds of it or None for all, saliency): each is answered 200. 10 s is 2 segments, 17 s 3,
# 20 s 4, 3 s one padded segment.
SCORED = [
    ("/clinical", "A1041.json", None, False),
    ("/clinical", "JS06908.json", None, False),
    ("/clinical", "JS06908.json", None, True),
    ("/features", "A5215.json", None, False),
    ("/both", "JS06908.json", 3.0, False),
    ("/clinical/npy", "A5215.json", None, False),
    ("/features/npy", "A1041.json", None, False),
    ("/both/npy", "A1041.json", None, True),
]
BURST = 4  # concurrent /clinical requests of a 10 s record, so that batches may hold several requests
MODELS_OF = {"clinical": ("finetuned",), "features": ("pretrained",), "both": ("finetuned", "pretrained")}
TOO_SHORT = json.dumps({"signal": [[0.0] * 900] * 12, "fs": 500}).encode()  # 1.8 s
# (path, headers, body, status): refused by a middleware (401, 413, 415), by BentoML (400), by a decoder (400),
# by preprocessing (422), or by no route at all (404).
REFUSED = [
    ("/clinical", {"content-type": "application/json"}, TOO_SHORT, 401),
    ("/features", {**AUTH, "content-type": "text/plain"}, b"{}", 415),
    ("/both", {**AUTH, "content-type": "application/json"}, json.dumps({"fs": 500, MARKER: 1}).encode(), 400),
    ("/clinical/npy", {**AUTH, "content-type": "application/octet-stream"}, b"not npy", 400),
    ("/clinical", {**AUTH, "content-type": "application/json"}, TOO_SHORT, 422),
    ("/clinical", {**AUTH, "content-type": "application/json"}, b" " * (MAX_BODY_BYTES + 1), 413),
    (UNKNOWN_PATH, AUTH, b"{}", 404),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("metrics")
    env = {
        "ECGFM_PRETRAINED_CHECKPOINT": str(PRETRAINED_CKPT),
        "ECGFM_FINETUNED_CHECKPOINT": str(FINETUNED_CKPT),
        "ECGFM_API_KEY": KEY,
        "ECGFM_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    port = free_port()
    running = ServerProcess(bentoml_command(port), server_env(env, tmp / "bentoml_home"), tmp / "server.log", port)
    with running:
        yield running


def post_scored(http: httpx.Client, route: str, name: str, seconds: float | None, saliency: bool) -> httpx.Response:
    record = load_json_record(name)
    samples = None if seconds is None else int(seconds * record["fs"])
    signal = [lead[:samples] for lead in record["signal"]]
    headers = {**AUTH, "X-Request-ID": MARKER}
    if route.endswith("/npy"):
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(signal, dtype=np.float32))
        params = {"fs": str(record["fs"]), "saliency": str(saliency).lower()}
        headers["content-type"] = "application/octet-stream"
        return http.post(route, params=params, content=buffer.getvalue(), headers=headers)
    return http.post(route, json={"signal": signal, "fs": record["fs"], "saliency": saliency}, headers=headers)


async def post_burst(url: str) -> list[httpx.Response]:
    record = load_json_record("JS06908.json")
    body = {"signal": record["signal"], "fs": record["fs"]}
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as http:
        return list(await asyncio.gather(*(http.post("/clinical", json=body) for _ in range(BURST))))


@pytest.fixture(scope="module")
def traffic(server: ServerProcess) -> dict:
    """The known traffic, sent once: what was answered (route, status, segments, saliency) and the scrape after."""
    answers = []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for route, name, seconds, saliency in SCORED:
            response = post_scored(http, route, name, seconds, saliency)
            assert response.status_code == 200, (route, response.text[:300])
            answers.append((route, 200, response.json(), saliency))
        for response in asyncio.run(post_burst(server.url)):
            assert response.status_code == 200, response.text[:300]
            answers.append(("/clinical", 200, response.json(), False))
        for path, headers, content, status in REFUSED:
            response = http.post(path, content=content, headers={**headers, "X-Request-ID": MARKER})
            assert response.status_code == status, (path, status, response.text[:300])
            answers.append((path, status, None, False))
        assert http.get("/metrics").status_code == 401  # the key guards /metrics too
        text = http.get("/metrics", headers=AUTH).text
    families = list(text_string_to_metric_families(text))
    return {"answers": answers, "families": families, "samples": [s for family in families for s in family.samples]}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def segments_sent(answers: list, model: str, saliency: bool | None = None) -> int:
    """Segments the answered requests sent to ``model`` (each answer says how many its record had)."""
    total = 0
    for route, status, body, with_saliency in answers:
        if status != 200 or (saliency is not None and with_saliency != saliency):
            continue
        output = route.split("/")[1]
        if model in MODELS_OF[output]:
            total += (body["clinical"] if output == "both" else body)["n_segments"]
    return total


def calls_sent(answers: list, model: str, saliency: bool) -> int:
    return sum(
        1
        for route, status, _, with_saliency in answers
        if status == 200 and with_saliency == saliency and model in MODELS_OF[route.split("/")[1]]
    )


# ---- what was sent is what is counted --------------------------------------------------------------------------


def test_records_scored_are_counted_by_route_and_output(traffic: dict) -> None:
    routes = collections.Counter(route for route, status, _, _ in traffic["answers"] if status == 200)
    for route in ("/clinical", "/features", "/both", "/clinical/npy", "/features/npy", "/both/npy"):
        output = route.split("/")[1]
        counted = value(traffic["samples"], "ecgfm_records_scored_total", endpoint=route, output=output)
        assert counted == routes[route], route
    for route in ("/clinical/file", "/features/file", "/both/file"):  # exported at 0 before any request
        assert value(traffic["samples"], "ecgfm_records_scored_total", endpoint=route) == 0


def test_segments_scored_in_the_model_workers_reach_the_api_services_metrics(traffic: dict) -> None:
    """Recorded in the Pretrained and Finetuned processes, served by the API process's /metrics."""
    samples, answers = traffic["samples"], traffic["answers"]
    for model in ("finetuned", "pretrained"):
        for saliency in (False, True):
            flag = str(saliency).lower()
            assert value(samples, "ecgfm_segments_scored_total", model=model, saliency=flag) == segments_sent(
                answers, model, saliency
            ), (model, saliency)
    assert segments_sent(answers, "finetuned") == 3 + 2 + 2 + 1 + 4 + 3 + 2 * BURST  # the records' 5 s segments


def test_model_calls_are_timed_per_model_as_the_api_service_sees_them(traffic: dict) -> None:
    samples, answers = traffic["samples"], traffic["answers"]
    for model in ("finetuned", "pretrained"):
        for saliency in (False, True):
            labels = {"model": model, "saliency": str(saliency).lower()}
            calls = calls_sent(answers, model, saliency)
            assert value(samples, "ecgfm_model_call_seconds_count", **labels) == calls, labels
            assert value(samples, "ecgfm_model_call_seconds_bucket", le="+Inf", **labels) == calls
            assert (value(samples, "ecgfm_model_call_seconds_sum", **labels) > 0) == (calls > 0)


def test_batches_are_observed_as_the_model_service_runs_them(traffic: dict) -> None:
    """Segments per batch and the batch's run, in the model service; as many batches as BentoML dispatched."""
    samples = traffic["samples"]
    for model, service in (("finetuned", "Finetuned"), ("pretrained", "Pretrained")):
        batches = value(samples, "ecgfm_model_batch_segments_count", model=model)
        assert batches == value(samples, "bentoml_service_adaptive_batch_size_count", runner_name=service) > 0
        assert value(samples, "ecgfm_model_batch_seconds_count", model=model) == batches
        assert value(samples, "ecgfm_model_batch_seconds_sum", model=model) > 0
        assert value(samples, "ecgfm_model_batch_segments_sum", model=model) == segments_sent(traffic["answers"], model)
        calls = calls_sent(traffic["answers"], model, False) + calls_sent(traffic["answers"], model, True)
        # BentoML's own histogram counts requests per batch: its sum is the calls (none was split here)
        assert value(samples, "bentoml_service_adaptive_batch_size_sum", runner_name=service) == calls
        assert batches <= calls


def test_queue_wait_is_never_negative(traffic: dict) -> None:
    """Each call holds the run of its batch, so segments x call seconds (API side) is at least segments x batch
    seconds (model side); their difference over the segments is the queue wait (docs/operations.md)."""
    samples = traffic["samples"]
    for model in ("finetuned", "pretrained"):
        call = value(samples, "ecgfm_model_call_segment_seconds_total", model=model)
        batch = value(samples, "ecgfm_model_batch_segment_seconds_total", model=model)
        assert call >= batch > 0, model


def test_responses_are_counted_by_status_with_the_middlewares_refusals(traffic: dict) -> None:
    """BentoML's own counter is outside our middlewares: it sees their 401, 413 and 415 as well as the 400, 404
    and 422 of BentoML and the handlers."""
    sent = collections.Counter((path, status) for path, status, _, _ in traffic["answers"])
    for (path, status), count in sent.items():
        counted = value(
            traffic["samples"],
            "bentoml_service_request_total",
            runner_name="ECGFMService",
            endpoint=path,
            http_response_code=str(status),
        )
        assert counted == count, (path, status)
    assert {401, 413, 415} <= {status for _, status in sent}


def test_both_model_services_are_ready(traffic: dict) -> None:
    for model in ("finetuned", "pretrained"):
        assert value(traffic["samples"], "ecgfm_model_ready", model=model) == 1


def test_no_label_holds_request_content(traffic: dict) -> None:
    """Our labels take a few fixed values; BentoML's ``endpoint`` is the path as sent (the unknown one included),
    which the example scrape config drops."""
    allowed = {
        "endpoint": {f"/{output}{suffix}" for output in MODELS_OF for suffix in ("", "/npy", "/file")},
        "output": set(MODELS_OF),
        "model": {"finetuned", "pretrained"},
        "saliency": {"true", "false"},
    }
    for sample in traffic["samples"]:
        labels = {key: label for key, label in sample.labels.items() if key != "le"}
        if sample.name.startswith("ecgfm_"):
            assert all(label in allowed[key] for key, label in labels.items()), sample
        elif MARKER in "".join(labels.values()):
            assert labels["endpoint"] == UNKNOWN_PATH, sample
            assert not keeps(labels["endpoint"])
    body_values = {json.dumps(v) for v in load_json_record("A1041.json")["signal"][0][:200] if len(json.dumps(v)) >= 6}
    label_text = " ".join(label for sample in traffic["samples"] for label in sample.labels.values())
    assert not any(number in label_text for number in body_values)


# ---- the dashboard and the rules name what the server exports ----------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers less strings, label matchers, ranges, label
    lists (``by (...)``), function names (an identifier followed by ``(``) and keywords. A histogram is read as
    ``<name>_bucket``/``_sum``/``_count`` and a counter as ``<name>_total``: the names as Prometheus stores them."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = LABEL_LISTS.sub(" ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if match.group() not in PROMQL_KEYWORDS and not expr[match.end() :].lstrip().startswith("("):
            names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(ecgfm_model_call_seconds_bucket{model=~"a|b"}[5m])))'
        " > 2 unless on (instance) sum(rate(x_total[$__rate_interval])) / ignoring(le) y"
    )
    assert metric_names(expr) == {"ecgfm_model_call_seconds_bucket", "x_total", "y"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for panel in dashboard["panels"] for p in (panel, *panel.get("panels", []))]
    expressions = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<selector>, <label>): the selector is PromQL
            expressions.append(re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])[1])
    return expressions


def alert_expressions() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36 and dashboard["id"] is None
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(target["expr"] and target["refId"] for target in panel["targets"])
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for shown in ("request rate", "error", "latency", "records scored", "segments scored", "model-call latency",
                  "batch size", "queue wait", "ready"):  # fmt: skip
        assert shown in titles, shown


def test_every_metric_the_dashboard_and_the_alerts_read_is_exported(traffic: dict) -> None:
    exported = {sample.name for sample in traffic["samples"]}
    for source, expressions in (("dashboard", dashboard_expressions()), ("alerts", alert_expressions())):
        assert expressions, source
        for expr in expressions:
            names = metric_names(expr)
            assert names, expr  # every expression reads some metric
            assert names <= exported, (source, sorted(names - exported), expr)


def test_the_dashboard_shows_the_statuses_of_the_middlewares_refusals() -> None:
    errors = [e for e in dashboard_expressions() if "bentoml_service_request_total" in e and "[45].." in e]
    assert errors and all("sum by (http_response_code)" in e for e in errors)


def test_every_exported_ecgfm_metric_is_in_the_metrics_table_and_back(traffic: dict) -> None:
    """The table names a counter as its sample (``..._total``), a histogram and a gauge by their family's name."""
    section = OPERATIONS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)`", section, flags=re.MULTILINE))
    as_documented = {f"{f.name}_total" if f.type == "counter" else f.name for f in traffic["families"]}
    ours = {name for name in as_documented if name.startswith("ecgfm_")}
    assert {name for name in documented if name.startswith("ecgfm_")} == ours
    assert documented - ours <= as_documented  # BentoML's own, as the server exports them


# ---- the example Prometheus configuration ---------------------------------------------------------------------


def keeps(endpoint: str) -> bool:
    """Whether the example scrape config's ``keep`` rule keeps a series with this ``endpoint`` (a relabel regex is
    anchored at both ends)."""
    (rule,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]["metric_relabel_configs"]
    assert rule["action"] == "keep" and rule["source_labels"] == ["endpoint"]
    return re.fullmatch(rule["regex"], endpoint) is not None


def test_the_example_scrape_config_keeps_every_route_the_server_labels(traffic: dict) -> None:
    endpoints = {sample.labels.get("endpoint", "") for sample in traffic["samples"]} - {UNKNOWN_PATH}
    assert {"", "/clinical/npy", "/classify_with_saliency", "/readyz"} <= endpoints
    assert all(keeps(endpoint) for endpoint in endpoints), sorted(e for e in endpoints if not keeps(e))
    assert not keeps(UNKNOWN_PATH) and not keeps("/clinical/x")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path: Path) -> None:
    for name in ("ecgfm-alerts.yml", "prometheus.yml"):
        shutil.copy(SCRAPE_CONFIG.parent / name, tmp_path / name)
    (tmp_path / "key").write_text(KEY)  # promtool checks that the credentials file exists
    config = tmp_path / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus/ecgfm-api-key", str(tmp_path / "key")))
    for command in (["check", "rules", str(tmp_path / "ecgfm-alerts.yml")], ["check", "config", str(config)]):
        result = subprocess.run(["promtool", *command], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

"""Every setting of ecgfm-serve: one typed, frozen object per concern, each built once from the environment.

* :class:`WeightsSettings`: which checkpoints (local paths, Hub revision, sha256 pins, demo weights);
* :class:`RuntimeSettings`: how a model runs (device, precision, positional conv, compile, weights cache);
* :class:`ServingSettings`: the HTTP service (input and body limits, concurrency, batching, timeouts, API key, tracing,
  probes);
* :class:`InterpreterSettings`: the interpreter's thresholds file (``POST /interpret``, the page, ``python -m
  interpreter report``).

Each field declares its environment variable, parser, default and meaning (:func:`setting`); ``from_env`` reads
them all, and this is the only module that reads an ``ECGFM_*`` variable. A bad value fails at once with one
message naming the variable (``ECGFM_MAX_BATCH_SIZE='abc': expected an integer ≥ 2``). ``docs/deployment.md``'s
table of variables is checked against :func:`variables` (``tests/test_settings.py``)::

    settings = Settings.from_env()                 # or WeightsSettings.from_env(), ... for one part
    settings.serving.max_batch_size                # 8 on CPU, 32 on CUDA, unless ECGFM_MAX_BATCH_SIZE is set
    settings.to_dict()                             # what /info reports (the API key only as set / not set)
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ecgfm.records.preprocess import DEFAULT_MAX_DURATION_S, LEAD_ORDER

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")  # auto: bf16 on CUDA, else fp32; int8: CPU only
POS_CONVS = ("conv", "fft")
DEMO_SIZES = ("full", "small")
DEFAULT_HF_REVISION = "main"  # pin a commit hash for a reproducible deployment (docs/deployment.md)
DEFAULT_DEMO_DIR = "~/.cache/ecgfm-serve/demo"
OTLP_TRACES_PATH = "/v1/traces"
OTEL_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The default body limit fits the longest record at 1000 Hz written by Python's json (a float64 takes at most
# 24 bytes: 17 significant digits, sign, point, exponent, ", "): 600 s * 1000 Hz * 12 leads * 24 B = 172.8 MB.
BODY_SIZING_FS = 1000
BYTES_PER_JSON_SAMPLE = 24


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used; the message names it and what is expected."""


Parser = Callable[[str], Any]
T = TypeVar("T")


Fallback = Callable[[Mapping[str, str]], "tuple[str, str] | None"]


def setting(
    env: str,
    parse: Parser,
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    default_doc: str = "",
    fallback: Fallback | None = None,
) -> Any:
    """A settings field read from ``env`` with ``parse``; ``default`` may be a callable (computed when unset);
    ``fallback`` names another variable and its text to parse when ``env`` is unset (or returns ``None``)."""
    metadata = {"env": env, "parse": parse, "doc": doc, "secret": secret, "default_doc": default_doc}
    metadata["fallback"] = fallback
    if callable(default):
        return field(default_factory=default, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


# Parsers: each takes the variable's stripped text and returns the value, or raises ValueError(what is expected).


def integer(minimum: int) -> Parser:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f"expected an integer ≥ {minimum}")
        return value

    return parse


def number(minimum: float) -> Parser:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= minimum or value == float("inf"):  # also refuses NaN
            raise ValueError(f"expected a number ≥ {minimum:g}")
        return value

    return parse


def boolean(text: str) -> bool:
    value = text.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected 1 or 0 (true/false, yes/no, on/off)")


def choice(*options: str) -> Parser:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text.lower()

    return parse


def text(value: str) -> str:
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError("expected a number from 0 to 1")
    return value


def otlp_traces_url(value: str) -> str:
    """An OTLP/HTTP endpoint; a bare ``http://host:4318`` gets the traces path ``/v1/traces`` (as OpenTelemetry's
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` does)."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("expected an http:// or https:// URL such as http://otel-collector:4318")
    if parsed.username or parsed.password:  # /info shows the endpoint
        raise ValueError("expected a URL without credentials; give them in OTEL_EXPORTER_OTLP_HEADERS")
    return value if parsed.path.strip("/") else value.rstrip("/") + OTLP_TRACES_PATH


def sha256_hex(value: str) -> str:
    digest = value.lower()
    if len(digest) != 64 or set(digest) - set("0123456789abcdef"):
        raise ValueError("expected a sha256 as 64 hexadecimal digits")
    return digest


def device_name(value: str) -> str:
    if value.lower() == "auto":
        return "auto"
    import torch  # only when a device is named, so that settings load without torch

    try:
        torch.device(value)
    except RuntimeError:
        raise ValueError("expected auto or a torch device such as cpu, cuda or cuda:1") from None
    return value


def otel_traces_endpoint(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """OpenTelemetry's own variables for the traces endpoint, read when ``ECGFM_OTLP_ENDPOINT`` is unset:
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as it is, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus ``/v1/traces``;
    none when ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. Only OTLP over HTTP is exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    found = [(name, environ.get(name, "").strip()) for name in OTEL_ENDPOINT_VARIABLES]
    name, value = next(((name, value) for name, value in found if value), ("", ""))
    if not value:
        return None
    for protocol_variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(protocol_variable, "").strip().lower()
        if protocol and protocol != "http/protobuf":
            raise SettingsError(
                f"{protocol_variable}={protocol!r}: ecgfm-serve exports OTLP over HTTP only; set http/protobuf and "
                "the collector's HTTP port (4318), or ECGFM_OTLP_ENDPOINT"
            )
        if protocol:
            break
    return name, value if name.endswith("TRACES_ENDPOINT") else value.rstrip("/") + OTLP_TRACES_PATH


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _from_env(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """``cls`` with each field read from its variable in ``environ`` (default: ``os.environ``); unset or empty
    variables keep the field's default."""
    environ = os.environ if environ is None else environ
    values = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        name, raw = spec.metadata["env"], environ.get(spec.metadata["env"], "").strip()
        if not raw and spec.metadata["fallback"]:
            name, raw = spec.metadata["fallback"](environ) or (name, raw)
        if not raw:
            continue
        try:
            values[spec.name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            shown = "<hidden>" if spec.metadata["secret"] else repr(raw)
            raise SettingsError(f"{name}={shown}: {exc}") from None
    return cls(**values)


def _to_dict(settings: Any) -> dict[str, Any]:
    """The fields as a JSON-ready dict; a secret is reported only as whether it is set (``<name>_set``)."""
    result: dict[str, Any] = {}
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if spec.metadata["secret"]:
            result[f"{spec.name}_set"] = bool(value)
        else:
            result[spec.name] = value
    return result


@dataclass(frozen=True)
class WeightsSettings:
    """Which checkpoint files are loaded (resolution order in :mod:`ecgfm.network.hub`)."""

    pretrained_checkpoint: str | None = setting(
        "ECGFM_PRETRAINED_CHECKPOINT", text, None, "path of the pretrained `.pt`; overrides the Hub"
    )
    finetuned_checkpoint: str | None = setting(
        "ECGFM_FINETUNED_CHECKPOINT", text, None, "path of the finetuned `.pt`; overrides the Hub"
    )
    hf_revision: str = setting(
        "ECGFM_HF_REVISION",
        text,
        DEFAULT_HF_REVISION,
        "Hub revision of `wanglab/ecg-fm` when no path is set (pin a commit hash)",
    )
    pretrained_sha256: str | None = setting(
        "ECGFM_PRETRAINED_SHA256", sha256_hex, None, "pin the pretrained file's sha256; a mismatch fails start-up"
    )
    finetuned_sha256: str | None = setting(
        "ECGFM_FINETUNED_SHA256", sha256_hex, None, "pin the finetuned file's sha256; a mismatch fails start-up"
    )
    demo: bool = setting(
        "ECGFM_DEMO", boolean, False, "`1`: random demo weights when no path is set; every response says demo"
    )
    demo_dir: str = setting("ECGFM_DEMO_DIR", text, DEFAULT_DEMO_DIR, "where demo checkpoints are written")
    demo_size: str = setting("ECGFM_DEMO_SIZE", choice(*DEMO_SIZES), "full", "demo architecture: `full` or `small`")

    from_env = classmethod(_from_env)
    to_dict = _to_dict

    def checkpoint(self, kind: str) -> str | None:
        """The local path set for ``kind`` (``"pretrained"`` or ``"finetuned"``), if any."""
        return self.pretrained_checkpoint if kind == "pretrained" else self.finetuned_checkpoint

    def sha256(self, kind: str) -> str | None:
        """The sha256 pinned for ``kind``, if any."""
        return self.pretrained_sha256 if kind == "pretrained" else self.finetuned_sha256

    @staticmethod
    def env_var(name: str) -> str:
        """The environment variable of field ``name`` (for messages that tell what to set)."""
        return next(spec.metadata["env"] for spec in dataclasses.fields(WeightsSettings) if spec.name == name)


@dataclass(frozen=True)
class RuntimeSettings:
    """How a loaded model runs (:func:`ecgfm.inference.load_model`; the fast path is :mod:`ecgfm.network.fast`)."""

    device: str = setting(
        "ECGFM_DEVICE", device_name, "auto", "torch device of the models: `auto` (CUDA when available), `cpu`, `cuda:1`"
    )
    precision: str = setting(
        "ECGFM_PRECISION",
        choice(*PRECISIONS),
        "fp32",
        "`bf16`/`fp16`/`auto` run the transformer in half precision (faster on GPU, not bit-equal to the "
        "reference); `auto` is bf16 on CUDA, else fp32; `int8` (CPU only): the transformer's linear layers in int8 "
        "(docs/performance.md). Any variant but fp32 (with `ECGFM_POS_CONV=conv`, no compile) must pass the "
        "self-check against fp32 at start (else exit 2); `/info`, `/status` and every response's `checkpoint."
        "precision` report it",
    )
    pos_conv: str = setting(
        "ECGFM_POS_CONV",
        choice(*POS_CONVS),
        "conv",
        "`fft`: the positional conv as an FFT, the same linear map within float rounding (the parity tolerances "
        "hold; speed in docs/performance.md); `/status` reports it",
    )
    compile: bool = setting(
        "ECGFM_COMPILE",
        boolean,
        False,
        "`1`: `torch.compile` the models (CUDA graphs on a GPU); start-up takes a minute or more; `/status` reports it",
    )
    weights_cache_dir: str | None = setting(
        "ECGFM_WEIGHTS_CACHE_DIR",
        text,
        None,
        "folder for stripped safetensors copies of the checkpoints (weights and `cfg.model` only, keyed by the "
        "file's sha256): later start-ups read a third of the bytes (docs/model.md)",
    )

    from_env = classmethod(_from_env)
    to_dict = _to_dict

    def is_reference(self) -> bool:
        """True when the models run as the fp32 reference, which needs no self-check."""
        return self.precision == "fp32" and self.pos_conv == "conv" and not self.compile


def _default_max_batch_size() -> int:
    # Segments (5 s each) per model call, across requests: 8 on CPU (full-size ECG-FM peaks there; 32 is 3x
    # slower on 2 cores), 32 on a GPU. Measurements: docs/performance.md, "Batching defaults".
    return 32 if _cuda_available() else 8


@dataclass(frozen=True)
class ServingSettings:
    """The HTTP service's limits, batching and access (read once when ``service.py`` is imported)."""

    max_duration_s: float = setting(
        "ECGFM_MAX_DURATION_S", number(1.0), DEFAULT_MAX_DURATION_S, "longest record accepted in seconds (422 above)"
    )
    max_body_bytes: int = setting(
        "ECGFM_MAX_BODY_BYTES",
        integer(1024),
        0,
        "largest request body in bytes (413 above)",
        default_doc=f"{BODY_SIZING_FS * BYTES_PER_JSON_SAMPLE * len(LEAD_ORDER)} × max duration "
        "(172800000: 600 s at 1000 Hz as JSON)",
    )
    max_concurrency: int = setting(
        "ECGFM_MAX_CONCURRENCY", integer(1), 64, "POSTs in flight per API process (429 with `Retry-After` above)"
    )
    max_batch_size: int = setting(
        "ECGFM_MAX_BATCH_SIZE",
        integer(2),
        _default_max_batch_size,
        "most segments (5 s each) in one model call, across requests, at least 2 (docs/performance.md)",
        default_doc="8 on CPU, 32 on CUDA",
    )
    max_latency_ms: int = setting(
        "ECGFM_MAX_LATENCY_MS",
        integer(1),
        120_000,
        "longest a request may queue for a model before it is refused (503)",
    )
    request_timeout_s: int = setting(
        "ECGFM_REQUEST_TIMEOUT_S", integer(1), 300, "BentoML traffic timeout of every service"
    )
    api_key: str = setting(
        "ECGFM_API_KEY",
        text,
        "",
        "when set, `Authorization: Bearer <key>` is required on every path but `/health`, `/livez`, `/healthz`, "
        "`/readyz` and the page at `/ui` with its files (docs/security.md)",
        secret=True,
    )
    api_keys_file: str | None = setting(
        "ECGFM_API_KEYS_FILE",
        text,
        None,
        "file of named API keys, one `name:key` line each (key at least 16 characters), re-read when it changes or "
        "on SIGHUP; with `ECGFM_API_KEY` too, that key is named `default`; a bad file stops start-up "
        "(docs/security.md)",
    )
    audit_log: str | None = setting(
        "ECGFM_AUDIT_LOG",
        text,
        None,
        "audit trail: a JSON Lines file (appended) or `-` for stdout; one line per POST request, its status, key "
        "name, record duration and the body's sha256, never a value (docs/security.md)",
    )
    otlp_endpoint: str = setting(
        "ECGFM_OTLP_ENDPOINT",
        otlp_traces_url,
        "",
        "OpenTelemetry collector (OTLP over HTTP, e.g. `http://otel-collector:4318`): every service sends its "
        "spans there; unset: no tracing (docs/operations.md)",
        default_doc="OpenTelemetry's `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` when set, "
        "else none",
        fallback=otel_traces_endpoint,
    )
    trace_sample_rate: float = setting(
        "ECGFM_TRACE_SAMPLE_RATE",
        fraction,
        1.0,
        "share of requests traced when `ECGFM_OTLP_ENDPOINT` is set (0 to 1; a traced caller's decision is kept)",
    )
    probes_dir: str | None = setting(
        "ECGFM_PROBES_DIR",
        text,
        None,
        "folder of probe files (`<name>.probe`, `ecgfm probe fit`): each is checked and loaded at start and served at "
        "`POST /probes/<name>`; one fit on other pretrained weights stops start-up (exit 2; docs/probes.md)",
    )

    from_env = classmethod(_from_env)
    to_dict = _to_dict

    def __post_init__(self) -> None:
        if not self.max_body_bytes:  # unset: sized for the longest record (see BYTES_PER_JSON_SAMPLE)
            body = int(self.max_duration_s * BODY_SIZING_FS * len(LEAD_ORDER) * BYTES_PER_JSON_SAMPLE)
            object.__setattr__(self, "max_body_bytes", body)


@dataclass(frozen=True)
class InterpreterSettings:
    """What the interpreter applies (:func:`interpreter.findings.load_config`)."""

    thresholds: str | None = setting(
        "ECGFM_THRESHOLDS",
        text,
        None,
        "thresholds file merged into `interpreter/thresholds.yaml` (e.g. the `thresholds.yaml` of `ecgfm evaluate`): "
        "used by `POST /interpret`, the page and `python -m interpreter report`; `/info` shows it and its "
        "provenance; a bad file stops start-up (docs/evaluation.md)",
    )

    from_env = classmethod(_from_env)
    to_dict = _to_dict


@dataclass(frozen=True)
class Settings:
    """All settings of one process."""

    weights: WeightsSettings
    runtime: RuntimeSettings
    serving: ServingSettings
    interpreter: InterpreterSettings = field(default_factory=InterpreterSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return cls(
            WeightsSettings.from_env(environ),
            RuntimeSettings.from_env(environ),
            ServingSettings.from_env(environ),
            InterpreterSettings.from_env(environ),
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The effective settings as ``/info`` reports them (the API key only as ``api_key_set``)."""
        return {
            "weights": self.weights.to_dict(),
            "runtime": self.runtime.to_dict(),
            "serving": self.serving.to_dict(),
            "interpreter": self.interpreter.to_dict(),
        }


SECTIONS: tuple[type, ...] = (WeightsSettings, RuntimeSettings, ServingSettings, InterpreterSettings)
TABLE_START, TABLE_END = "<!-- settings table: python -m ecgfm.settings -->", "<!-- end of settings table -->"


def _default_markdown(spec: dataclasses.Field) -> str:
    if spec.metadata["default_doc"]:
        return spec.metadata["default_doc"]
    if spec.default is None or spec.default == "":
        return "–"
    if isinstance(spec.default, bool | float):
        return f"`{float(spec.default):g}`"
    return f"`{spec.default}`"


def variables() -> list[dict[str, str]]:
    """Every ``ECGFM_*`` variable: ``{"env", "section", "field", "default", "doc"}`` (the docs table's source;
    ``default`` as markdown)."""
    return [
        {
            "env": spec.metadata["env"],
            "section": section.__name__,
            "field": spec.name,
            "default": _default_markdown(spec),
            "doc": spec.metadata["doc"],
        }
        for section in SECTIONS
        for spec in dataclasses.fields(section)
    ]


def markdown_table() -> str:
    """The table of variables in ``docs/deployment.md`` (between :data:`TABLE_START` and :data:`TABLE_END`)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for row in variables():
        lines.append(f"| `{row['env']}` | {row['default']} | {row['doc']} |")
    return "\n".join([TABLE_START, *lines, TABLE_END])


if __name__ == "__main__":
    print(markdown_table())

"""From ECG-FM probabilities and the measured heart rate to grouped findings with severities.

The rules carry identifiers (T1, S1, H1, ...) that ``docs/clinical_methodology.md`` describes one by one and
that appear in every finding's ``rules`` so a report can be traced back to them. All numbers come from the
configuration (``interpreter/thresholds.yaml`` merged with an optional user file).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ecgfm.labels import LABELS

SEVERITIES: tuple[str, ...] = ("normal", "borderline", "abnormal", "critical")
GROUP_ORDER: tuple[str, ...] = ("Rhythm", "Conduction", "Ischemia", "Structural", "Other")
RATE_LABELS: dict[str, str] = {"Tachycardia": "tachycardia", "Bradycardia": "bradycardia"}


class ConfigError(ValueError):
    """An invalid thresholds file; the message names the key and the problem."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_config_path() -> Path:
    return Path(str(resources.files("interpreter") / "thresholds.yaml"))


CONFIG_VERSION = 1
# Every key a thresholds file may hold, and what each mapping's keys may be: a key outside these is refused by
# name (a misspelt or unused setting would otherwise be ignored without a word).
TOP_KEYS = ("version", "groups", "group_notes", "labels", "heart_rate", "provenance")  # provenance: ecgfm evaluate
LABEL_KEYS = ("threshold", "borderline", "severity")
HEART_RATE_KEYS = ("bradycardia_below_bpm", "tachycardia_above_bpm", "low", "high")
BAND_KEYS = {"low": ("below", "severity"), "high": ("above", "severity")}


def _refuse_unknown(where: str, mapping: Any, known: tuple[str, ...], what: str) -> None:
    """ConfigError naming the first key of ``mapping`` (at dotted path ``where``) that is not in ``known``."""
    if not isinstance(mapping, dict):
        return  # not a mapping: validate_config says what is wrong with the value
    for key in mapping:
        if key not in known:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key {name!r} (it would do nothing); {what}: {', '.join(known)}")


def check_keys(data: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for a key that the interpreter does not read, anywhere in a thresholds file."""
    _refuse_unknown("", data, TOP_KEYS, "the known top-level keys are")
    if "version" in data and data["version"] != CONFIG_VERSION:
        raise ConfigError(f"version: this interpreter reads version {CONFIG_VERSION}, got {data['version']!r}")
    _refuse_unknown("groups", data.get("groups"), GROUP_ORDER, "the groups are")
    _refuse_unknown("group_notes", data.get("group_notes"), GROUP_ORDER, "the groups are")
    labels = data.get("labels")
    _refuse_unknown("labels", labels, LABELS, "the labels are ECG-FM's 17 (ecgfm.labels.LABELS)")
    if isinstance(labels, dict):
        for label, entry in labels.items():
            _refuse_unknown(f"labels.{label}", entry, LABEL_KEYS, "a label's keys are")
    heart_rate = data.get("heart_rate")
    _refuse_unknown("heart_rate", heart_rate, HEART_RATE_KEYS, "its keys are")
    for side, keys in BAND_KEYS.items():
        bands = heart_rate.get(side) if isinstance(heart_rate, dict) else None
        for i, band in enumerate(bands if isinstance(bands, list) else []):
            _refuse_unknown(f"heart_rate.{side}[{i}]", band, keys, "a band's keys are")


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Load the default thresholds, merged key by key with the user file ``path`` if given, and validate.

    ``config["source"]`` is ``path`` (or ``"default"``); ``config["provenance"]`` is the user file's
    ``provenance:`` block (where its thresholds came from: ``ecgfm evaluate`` writes one), else ``None``. A key that
    the interpreter does not read, in either file, is refused with a :class:`ConfigError` naming it.
    """
    config = yaml.safe_load(default_config_path().read_text())
    try:
        check_keys(config)
    except ConfigError as exc:
        raise ConfigError(f"{default_config_path()}: {exc}") from None
    config["provenance"] = None
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"thresholds file {path}: cannot be read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"thresholds file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            check_keys(user)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if "provenance" in user and not isinstance(user["provenance"], dict):
            raise ConfigError(f"{path}: provenance must be a mapping (where the thresholds came from)")
        config = _merge(config, user)
        config["source"] = str(path)
    else:
        config["source"] = "default"
    try:
        validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"thresholds file {path}: {exc}" if path is not None else str(exc)) from None
    return config


def validate_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless every label has one group and sane thresholds and severities."""
    grouped = [label for labels in config["groups"].values() for label in (labels or [])]
    unknown = sorted(set(grouped) - set(LABELS))
    if unknown:
        raise ConfigError(f"groups: unknown labels {unknown}")
    missing = [label for label in LABELS if grouped.count(label) != 1]
    if missing:
        raise ConfigError(f"groups: every label needs exactly one group; check {missing}")
    for label in LABELS:
        entry = config["labels"].get(label)
        if not isinstance(entry, dict):
            raise ConfigError(f"labels: no settings for {label!r}")
        thr, low, sev = entry.get("threshold"), entry.get("borderline"), entry.get("severity")
        if not isinstance(thr, int | float) or not 0.0 < thr <= 1.0:
            raise ConfigError(f"labels.{label}.threshold must be a number in (0, 1], got {thr!r}")
        if not isinstance(low, int | float) or not 0.0 <= low <= thr:
            raise ConfigError(f"labels.{label}.borderline must be a number in [0, threshold], got {low!r}")
        if sev not in SEVERITIES:
            raise ConfigError(f"labels.{label}.severity must be one of {SEVERITIES}, got {sev!r}")
    hr = config["heart_rate"]
    if not hr["bradycardia_below_bpm"] < hr["tachycardia_above_bpm"]:
        raise ConfigError("heart_rate: bradycardia_below_bpm must be below tachycardia_above_bpm")
    for band in [*hr["low"], *hr["high"]]:
        if band.get("severity") not in SEVERITIES:
            raise ConfigError(f"heart_rate band {band}: severity must be one of {SEVERITIES}")


def worst(severities: list[str]) -> str:
    """The most severe of ``severities`` (``normal`` for none)."""
    return max(severities, key=SEVERITIES.index, default="normal")


def rate_severity(bpm: float, config: dict[str, Any]) -> str:
    """Severity band of a measured heart rate (rule H7)."""
    hr = config["heart_rate"]
    for band in hr["low"]:
        if bpm < float(band["below"]):
            return band["severity"]
    for band in hr["high"]:
        if bpm > float(band["above"]):
            return band["severity"]
    return "normal"


@dataclass
class Finding:
    """One label's outcome.

    ``status``: ``present``, ``possible`` (probability in the borderline zone), ``absent`` or ``discordant``
    (the model's rate finding contradicted by the measured heart rate, which overrides it). ``source``:
    ``model``, ``heart_rate`` or ``model+heart_rate``.
    """

    label: str
    group: str
    probability: float | None
    threshold: float
    status: str
    severity: str
    source: str = "model"
    rules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reported(self) -> bool:
        return self.status != "absent"


@dataclass
class Interpretation:
    """Everything a report shows for one record."""

    record: str
    severity: str
    severity_reasons: list[str]
    findings: list[Finding]
    groups: dict[str, list[str]]
    group_notes: dict[str, str]
    heart_rate: dict[str, Any] | None
    rate_severity: str | None
    discordances: list[str]
    notes: list[str]
    probabilities: dict[str, float]
    thresholds_source: str

    def reported_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.reported]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [asdict(f) for f in self.reported_findings()]
        return data


def _label_group(config: dict[str, Any]) -> dict[str, str]:
    return {label: group for group, labels in config["groups"].items() for label in (labels or [])}


def _threshold_finding(label: str, p: float, group: str, config: dict[str, Any]) -> Finding:
    """Rule T1: present at p >= threshold, possible at borderline <= p < threshold, else absent."""
    entry = config["labels"][label]
    thr, low, sev = float(entry["threshold"]), float(entry["borderline"]), entry["severity"]
    if p >= thr:
        return Finding(label, group, p, thr, "present", sev, rules=["T1"])
    if p >= low:
        return Finding(label, group, p, thr, "possible", "normal" if sev == "normal" else "borderline", rules=["T1"])
    return Finding(label, group, p, thr, "absent", "normal", rules=["T1"])


def _apply_rate_rules(f: Finding, bpm: float, band: str, config: dict[str, Any]) -> str | None:
    """Rules H1-H6: the measured rate decides tachycardia/bradycardia; returns a discordance or None."""
    hr = config["heart_rate"]
    if f.label == "Tachycardia":
        measured = bpm > float(hr["tachycardia_above_bpm"])
        criterion = f"> {hr['tachycardia_above_bpm']} bpm"
        confirm, override, add = "H1", "H2", "H3"
    else:
        measured = bpm < float(hr["bradycardia_below_bpm"])
        criterion = f"< {hr['bradycardia_below_bpm']} bpm"
        confirm, override, add = "H4", "H5", "H6"
    model_says = f.status == "present"
    p = "n/a" if f.probability is None else f"{f.probability:.2f}"
    if measured and f.status in ("present", "possible"):
        f.status, f.source, f.severity = "present", "model+heart_rate", worst([band, "borderline"])
        f.rules.append(confirm)
        f.notes.append(f"confirmed by the measured heart rate {bpm:.0f} bpm ({criterion})")
        return None
    if measured:
        f.status, f.source, f.severity = "present", "heart_rate", worst([band, "borderline"])
        f.rules.append(add)
        msg = (
            f"{f.label}: measured heart rate {bpm:.0f} bpm ({criterion}) but the model's probability "
            f"is {p} (below its threshold); reported from the measured rate — discordant, review the ECG"
        )
        f.notes.append("added from the measured heart rate; the model did not report it (discordant)")
        return msg
    if model_says:
        f.status, f.source, f.severity = "discordant", "model+heart_rate", "borderline"
        f.rules.append(override)
        f.notes.append(f"overridden: the measured heart rate {bpm:.0f} bpm does not meet {criterion}")
        return (
            f"{f.label}: the model reports it (p={p}) but the measured heart rate is {bpm:.0f} bpm "
            f"(not {criterion}); the measured rate overrides the model — discordant, review the ECG"
        )
    if f.status == "possible":
        f.status, f.severity = "absent", "normal"
        f.rules.append(override)
        f.notes.append(f"not supported by the measured heart rate {bpm:.0f} bpm")
    return None


def interpret(
    probabilities: dict[str, float],
    heart_rate: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    record: str = "",
) -> Interpretation:
    """Turn model probabilities (17 labels) and an optional heart-rate measurement into findings.

    Args:
        probabilities: label -> probability, for all 17 labels of :data:`ecgfm.labels.LABELS`.
        heart_rate: :meth:`HeartRateResult.to_dict` output (``heart_rate_bpm``, ``quality``, ``rr_cv``, ...)
            or ``None`` when no signal is available.
        config: :func:`load_config` output (default thresholds when ``None``).
        record: record name for the report.
    """
    config = config or load_config()
    missing = [label for label in LABELS if label not in probabilities]
    if missing:
        raise ValueError(f"probabilities lack labels {missing}")
    probs = {label: float(probabilities[label]) for label in LABELS}
    bad = [label for label, p in probs.items() if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
    if bad:
        raise ValueError(f"probabilities must be in [0, 1]; check {bad}")
    groups_of = _label_group(config)
    findings = [_threshold_finding(label, probs[label], groups_of[label], config) for label in LABELS]
    by_label = {f.label: f for f in findings}
    notes: list[str] = []
    discordances: list[str] = []
    reasons: list[str] = []

    bpm = heart_rate.get("heart_rate_bpm") if heart_rate else None
    reliable = bool(heart_rate) and bpm is not None and heart_rate.get("quality") == "good"
    band: str | None = None
    if reliable:
        band = rate_severity(float(bpm), config)
        for label in RATE_LABELS:
            msg = _apply_rate_rules(by_label[label], float(bpm), band, config)
            if msg:
                discordances.append(msg)
        if band != "normal":
            reasons.append(f"H7: measured heart rate {bpm:.0f} bpm is in the {band} band")
        # H9: irregular RR with sinus rhythm and no AF/flutter reported.
        irregular = heart_rate.get("irregular")
        af_like = any(by_label[x].reported for x in ("Atrial fibrillation", "Atrial flutter"))
        if irregular and not af_like:
            notes.append(
                f"H9: RR intervals are irregular (coefficient of variation "
                f"{heart_rate['rr_cv']:.2f}) although the model reports no atrial "
                "fibrillation/flutter: consider sinus arrhythmia, ectopic beats or missed AF — "
                "review the rhythm strip"
            )
    else:
        why = "no signal was given" if not heart_rate else "; ".join(heart_rate.get("quality_reasons") or [])
        notes.append(
            f"H8: heart-rate rules not applied ({why or 'heart rate unavailable'}); "
            "tachycardia/bradycardia are the model's findings only"
        )

    if by_label["Poor data quality"].status == "present":
        notes.append("Q1: the model flags poor data quality; every finding is less reliable")

    rhythm_reported = any(f.reported and f.group == "Rhythm" and f.status != "discordant" for f in findings)
    if not rhythm_reported:
        reasons.append("S2: no rhythm finding reached its threshold (rhythm undetermined)")

    for f in findings:
        if f.reported and f.severity != "normal":
            reasons.append(f"{f.label} ({f.status}): {f.severity}")
    overall = worst(
        [f.severity for f in findings if f.reported]
        + ([band] if band else [])
        + (["borderline"] if not rhythm_reported or discordances else [])
    )
    if discordances:
        reasons.append("S3: the model and the measured heart rate disagree (at least borderline)")

    groups = {g: [f.label for f in findings if f.group == g and f.reported] for g in GROUP_ORDER}
    group_notes = {
        g: " ".join(str(config.get("group_notes", {}).get(g, "")).split())
        for g in GROUP_ORDER
        if config.get("group_notes", {}).get(g)
    }
    return Interpretation(
        record=record,
        severity=overall,
        severity_reasons=reasons,
        findings=findings,
        groups=groups,
        group_notes=group_notes,
        heart_rate=heart_rate,
        rate_severity=band,
        discordances=discordances,
        notes=notes,
        probabilities=probs,
        thresholds_source=config.get("source", "default"),
    )

"""Reports of an :class:`~interpreter.findings.Interpretation`: text, JSON, HTML (12-lead PNG) and CSV."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ecgfm.labels import LABELS
from interpreter import DISCLAIMER
from interpreter.findings import GROUP_ORDER, Interpretation

SEVERITY_COLOURS = {
    "normal": "#2e7d32",
    "borderline": "#b58900",
    "abnormal": "#d84315",
    "critical": "#b71c1c",
}


DEMO_BANNER = (
    'DEMO WEIGHTS: the result says "demo": true, these probabilities are not a trained ECG-FM\'s (random demo '
    "weights). Every finding and the severity below are meaningless: the report shows how the interpreter works, "
    "nothing about this ECG."
)


def is_demo(meta: dict[str, Any] | None) -> bool:
    """Whether the probabilities came from demo weights: the result's ``demo``, or its checkpoint's (``meta``'s
    ``checkpoint`` is the object of a results file, or the JSON text the report command keeps of a model's
    answer). A results CSV gives them as text (``True``, ``true``, ``1``)."""
    meta = meta or {}
    checkpoint = meta.get("checkpoint")
    if isinstance(checkpoint, str):
        try:
            checkpoint = json.loads(checkpoint)
        except ValueError:
            checkpoint = None
    flags = [meta.get("demo"), checkpoint.get("demo") if isinstance(checkpoint, dict) else None]
    return any(flag is True or str(flag).strip().lower() in ("true", "1") for flag in flags if flag is not None)


SALIENCY_NOTE = (
    "Saliency (the shading of each lead and the band under the lead II rhythm strip): where ECG-FM attended (its "
    "last attention layer; for each 32 ms step the largest weight it puts on any step), darker = more, one scale "
    "over the whole record. It shows attention, not causation: not why a finding was given, nor where it is."
)
SALIENCY_CMAP = "Oranges"
RHYTHM_LEAD = "II"


def saliency_steps(saliency: dict[str, Any], duration_s: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A response's ``saliency`` on the record's time axis: step edges ``[n + 1]`` (s), values ``[n]``, and the
    record-wide (min, max) used for the colour scale. Steps that start at or after ``duration_s`` (the padding of
    a short record) are left out."""
    step = float(saliency["step_s"])
    segments = zip(saliency["segment_start_s"], saliency["values"], strict=True)
    starts = np.concatenate([start + step * np.arange(len(row)) for start, row in segments])
    values = np.concatenate([np.asarray(row, dtype=np.float64) for row in saliency["values"]])
    keep = starts < duration_s
    starts, values = starts[keep], values[keep]
    edges = np.append(starts, min(starts[-1] + step, duration_s))
    return edges, values, float(values.min()), float(values.max())


def saliency_window(
    saliency: dict[str, Any], duration_s: float, window_s: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """:func:`saliency_steps` cut to the plotted ``[0, window_s)`` (edges clipped there), with the colour scale
    still the whole record's (min, max): what the rhythm strip's band and the lead panels draw."""
    edges, values, low, high = saliency_steps(saliency, duration_s)
    keep = edges[:-1] < window_s
    return np.minimum(edges[: keep.sum() + 1], window_s), values[keep], low, high


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def report_dict(interp: Interpretation, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: disclaimer first, ``demo`` (true when the probabilities came from demo weights), then the
    interpretation and where the probabilities came from."""
    data = {"disclaimer": DISCLAIMER, "demo": is_demo(meta), **interp.to_dict()}
    if data.get("heart_rate"):
        data["heart_rate"] = {k: v for k, v in data["heart_rate"].items() if k != "rr_intervals_s"} | {
            "rr_intervals_s": [round(v, 4) for v in data["heart_rate"].get("rr_intervals_s", [])]
        }
    data["source"] = meta or {}
    return data


def render_json(interp: Interpretation, meta: dict[str, Any] | None = None) -> str:
    return json.dumps(report_dict(interp, meta), indent=2, ensure_ascii=False) + "\n"


def _hr_lines(interp: Interpretation) -> list[str]:
    hr = interp.heart_rate
    if not hr:
        return ["Heart rate: not measured (no signal given)"]
    lines = [
        (
            f"Heart rate: {_fmt(hr.get('heart_rate_bpm'))} bpm from "
            f"{hr.get('n_beats', len(hr.get('r_peaks', [])))} beats (lead {hr.get('lead')}, "
            f"signal quality: {hr.get('quality')})"
        ),
        f"RR irregularity: CV {_fmt(hr.get('rr_cv'), 3)}, RMSSD {_fmt(hr.get('rmssd_ms'), 0)} ms"
        + (" — irregular" if hr.get("irregular") else ""),
    ]
    if interp.rate_severity:
        lines.append(f"Rate band: {interp.rate_severity}")
    for reason in hr.get("quality_reasons") or []:
        lines.append(f"Quality warning: {reason}")
    return lines


def render_text(interp: Interpretation, meta: dict[str, Any] | None = None) -> str:
    """Plain-text report, one screen for one record; from demo weights, :data:`DEMO_BANNER` is its first line."""
    meta = meta or {}
    demo = is_demo(meta)
    out = [f"!!! {DEMO_BANNER} !!!", ""] if demo else []
    out += [f"ECG interpretation — record {interp.record}", "=" * 60, f"*** {DISCLAIMER} ***", ""]
    if meta:
        out.append("Source: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    severity = f"OVERALL SEVERITY: {interp.severity.upper()}" + (" (DEMO WEIGHTS: meaningless)" if demo else "")
    out += [severity, *_hr_lines(interp), ""]
    for group in GROUP_ORDER:
        out.append(f"[{group}]")
        reported = [f for f in interp.findings if f.group == group and f.reported]
        for f in reported:
            p = "n/a" if f.probability is None else f"{f.probability:.2f}"
            out.append(
                f"  - {f.label}: {f.status}, {f.severity} (p={p}, threshold {f.threshold:.2f}; "
                f"source {f.source}; rules {', '.join(f.rules)})"
            )
            out += [f"      {note}" for note in f.notes]
        if not reported:
            out.append("  (none)")
        if group in interp.group_notes:
            out.append(f"  note: {interp.group_notes[group]}")
    if interp.discordances:
        out += ["", "Discordances:", *[f"  - {d}" for d in interp.discordances]]
    if interp.notes:
        out += ["", "Notes:", *[f"  - {n}" for n in interp.notes]]
    reasons = interp.severity_reasons or ["no abnormal finding"]
    out += ["", "Why this severity:", *[f"  - {r}" for r in reasons]]
    out += ["", "All probabilities:"]
    out += [f"  {label:<45} {interp.probabilities[label]:.3f}" for label in LABELS]
    out += [
        "",
        f"Thresholds: {interp.thresholds_source} (see docs/clinical_methodology.md)",
        "",
        f"*** {DISCLAIMER} ***",
        "",
    ]
    return "\n".join(out)


def ecg_figure(
    signal: np.ndarray,
    fs: float,
    lead_names: list[str],
    r_peaks: list[int] | None = None,
    peak_lead: str | None = None,
    max_seconds: float = 10.0,
    saliency: dict[str, Any] | None = None,
) -> Any:
    """The matplotlib figure of :func:`plot_ecg_png` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    sig = np.atleast_2d(np.asarray(signal, dtype=np.float64))
    n = min(sig.shape[1], int(max_seconds * fs))
    t = np.arange(n) / fs
    n_leads = sig.shape[0]
    cols = 2 if n_leads > 6 else 1
    rows = int(np.ceil(n_leads / cols))
    shading = saliency_window(saliency, sig.shape[1] / fs, n / fs) if saliency else None
    extra = [1.7] if shading is not None else []  # the rhythm strip and the saliency band under it
    fig, axes = plt.subplots(
        rows + len(extra), cols, figsize=(12, 1.3 * rows + 0.8 + 1.7 * bool(extra)), sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": [1] * rows + extra},
    )  # fmt: skip
    for k in range(rows * cols):
        ax = axes[k % rows][k // rows]
        if k >= n_leads:
            ax.axis("off")
            continue
        x = sig[k, :n]
        ax.plot(t, x, color="black", linewidth=0.6)
        if r_peaks and lead_names[k] == peak_lead:
            peaks = [p for p in r_peaks if p < n]
            ax.plot(np.asarray(peaks) / fs, x[peaks], "v", color="#d84315", markersize=4, label="R peak")
        if shading is not None:
            edges, values, low, high = shading
            y_low, y_high = ax.get_ylim()
            ax.pcolormesh(edges, [y_low, y_high], values[None, :], cmap=SALIENCY_CMAP, vmin=low, vmax=high,
                          alpha=0.55, shading="flat", zorder=0, rasterized=True)  # fmt: skip
            ax.set_ylim(y_low, y_high)
            ax.set_xlim(0, n / fs)
        ax.set_ylabel(lead_names[k], rotation=0, ha="right", va="center")
        ax.grid(True, color="#f4b6b6", linewidth=0.4)
        ax.tick_params(labelsize=7)
    if shading is not None:
        _rhythm_strip_with_saliency(fig, axes, rows, sig, fs, n, lead_names, shading)
    else:
        for c in range(cols):
            axes[rows - 1][c].set_xlabel("time (s)")
    title = f"ECG, first {n / fs:.1f} s at {fs:g} Hz (mV); ▼ = detected R peaks in lead {peak_lead}"
    note = "\n" + textwrap.fill(SALIENCY_NOTE, 160) if shading is not None else ""
    fig.suptitle(title + note, fontsize=8 if shading else 9)
    fig.tight_layout()
    return fig


def _rhythm_strip_with_saliency(
    fig: Any,
    axes: np.ndarray,
    rows: int,
    sig: np.ndarray,
    fs: float,
    n: int,
    lead_names: list[str],
    shading: tuple[np.ndarray, np.ndarray, float, float],
) -> None:
    """The figure's last row, across it: lead II over the plotted window (``gid="rhythm-strip"``), under it on the
    same time axis the saliency as a heat strip (``gid="saliency-band"``; one colour scale, the whole record's min
    to max, as the panels' shading) and beside that its colour bar (``gid="saliency-colorbar"``)."""
    from matplotlib.gridspec import GridSpecFromSubplotSpec

    cell = axes[rows][0].get_gridspec()[rows, :]
    for ax in axes[rows]:
        ax.remove()
    grid = GridSpecFromSubplotSpec(2, 2, cell, height_ratios=[1.3, 0.4], width_ratios=[1, 0.012], hspace=0.1,
                                   wspace=0.01)  # fmt: skip
    names = [name.strip().upper() for name in lead_names]
    lead = names.index(RHYTHM_LEAD) if RHYTHM_LEAD in names else 0
    strip = fig.add_subplot(grid[0, 0], sharex=axes[0][0], gid="rhythm-strip")
    strip.plot(np.arange(n) / fs, sig[lead, :n], color="black", linewidth=0.6)
    strip.set_ylabel(f"{lead_names[lead]}\n(rhythm)", rotation=0, ha="right", va="center")
    strip.grid(True, color="#f4b6b6", linewidth=0.4)
    strip.tick_params(labelsize=7, labelbottom=False)
    edges, values, low, high = shading
    band = fig.add_subplot(grid[1, 0], sharex=axes[0][0], gid="saliency-band")
    mesh = band.pcolormesh(edges, [0.0, 1.0], values[None, :], cmap=SALIENCY_CMAP, vmin=low, vmax=high,
                           shading="flat", rasterized=True)  # fmt: skip
    band.set_xlim(0, n / fs)
    band.set_yticks([])
    band.set_ylabel("saliency", rotation=0, ha="right", va="center")
    band.set_xlabel("time (s)")
    band.tick_params(labelsize=7, labelbottom=True)
    colorbar_axes = fig.add_subplot(grid[1, 1], gid="saliency-colorbar")
    colorbar = fig.colorbar(mesh, cax=colorbar_axes)
    colorbar.set_ticks([low, high], labels=[f"{low:.4f} min", f"{high:.4f} max"])
    colorbar_axes.tick_params(labelsize=7)


def plot_ecg_png(
    signal: np.ndarray,
    fs: float,
    lead_names: list[str],
    r_peaks: list[int] | None = None,
    peak_lead: str | None = None,
    max_seconds: float = 10.0,
    saliency: dict[str, Any] | None = None,
) -> bytes:
    """A PNG of every lead (the first ``max_seconds``) on ECG-paper-like axes, R peaks marked. With ``saliency``
    (a response's ``saliency`` object) each lead's panel is shaded by it and a lead II rhythm strip is added with
    the saliency as a heat strip under it and a colour bar: one colour scale for the whole record (its min to max,
    padded steps left out), nothing drawn past the record's end."""
    fig = ecg_figure(signal, fs, lead_names, r_peaks, peak_lead, max_seconds, saliency)
    from matplotlib import pyplot as plt  # after ecg_figure has chosen the Agg backend

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def render_html(
    interp: Interpretation, png: bytes | None = None, meta: dict[str, Any] | None = None, saliency: bool = False
) -> str:
    """Self-contained HTML report; the ECG plot is embedded as a base64 PNG. From demo weights, :data:`DEMO_BANNER`
    opens the page (``id="demo-banner"``) and the severity says so."""
    e = html.escape
    colour = SEVERITY_COLOURS[interp.severity]
    demo = is_demo(meta)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ECG interpretation — {e(interp.record)}</title>",
        (
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
            ".disclaimer{background:#fff3cd;border:2px solid #b58900;padding:.7em;font-weight:bold}"
            ".sev{color:#fff;padding:2px 8px;border-radius:4px}"
            ".demo{background:#b71c1c;color:#fff;padding:.8em;font-size:1.2em;font-weight:bold}</style></head><body>"
        ),
        *([f'<p class="demo" id="demo-banner" role="alert">{e(DEMO_BANNER)}</p>'] if demo else []),
        f'<p class="disclaimer" id="disclaimer">{e(DISCLAIMER)}</p>',
        f"<h1>ECG interpretation — record {e(interp.record)}</h1>",
        (
            f'<p>Overall severity: <span class="sev" style="background:{colour}" id="severity">'
            f"{e(interp.severity)}</span>{' <strong>(demo weights: meaningless)</strong>' if demo else ''}</p>"
        ),
    ]
    if meta:
        parts.append("<p>Source: " + e(", ".join(f"{k}={v}" for k, v in meta.items())) + "</p>")
    parts.append("<h2>Heart rate</h2><ul>" + "".join(f"<li>{e(line)}</li>" for line in _hr_lines(interp)) + "</ul>")
    parts.append(
        "<h2>Findings by group</h2><table><tr><th>group</th><th>finding</th><th>status</th>"
        "<th>severity</th><th>probability</th><th>threshold</th><th>source</th><th>rules</th>"
        "<th>notes</th></tr>"
    )
    for group in GROUP_ORDER:
        reported = [f for f in interp.findings if f.group == group and f.reported]
        if not reported:
            note = interp.group_notes.get(group, "none")
            parts.append(f"<tr><td>{e(group)}</td><td colspan=8><i>{e(note)}</i></td></tr>")
        for f in reported:
            p = "n/a" if f.probability is None else f"{f.probability:.3f}"
            parts.append(
                f"<tr><td>{e(group)}</td><td>{e(f.label)}</td><td>{e(f.status)}</td>"
                f'<td style="color:{SEVERITY_COLOURS[f.severity]}">{e(f.severity)}</td><td>{p}</td>'
                f"<td>{f.threshold:.2f}</td><td>{e(f.source)}</td><td>{e(', '.join(f.rules))}</td>"
                f"<td>{e('; '.join(f.notes))}</td></tr>"
            )
    parts.append("</table>")
    for title, items in (
        ("Discordances", interp.discordances),
        ("Notes", interp.notes),
        ("Why this severity", interp.severity_reasons),
    ):
        if items:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
    if png:
        alt = "ECG leads with detected R peaks"
        if saliency:
            alt += ", shaded by saliency, and a lead II rhythm strip with the saliency band under it"
        parts.append(
            f'<h2>ECG</h2><img id="ecg-plot" alt="{alt}" '
            'style="width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        )
        if saliency:
            parts.append(f'<p id="saliency-note">{e(SALIENCY_NOTE)}</p>')
    parts.append(
        "<h2>All probabilities</h2><table><tr><th>label</th><th>probability</th></tr>"
        + "".join(f"<tr><td>{e(label)}</td><td>{interp.probabilities[label]:.3f}</td></tr>" for label in LABELS)
        + "</table>"
    )
    parts.append(
        f"<p>Thresholds: {e(interp.thresholds_source)}; rules are described in docs/clinical_methodology.md.</p>"
    )
    parts.append(f'<p class="disclaimer">{e(DISCLAIMER)}</p></body></html>')
    return "\n".join(parts) + "\n"


CSV_FIXED = [
    "record",
    "demo",
    "severity",
    "heart_rate_bpm",
    "hr_quality",
    "n_beats",
    "rr_cv",
    "rr_irregular",
    "rate_severity",
    "findings",
    *[f"group_{g}" for g in GROUP_ORDER],
    "discordances",
    "disclaimer",
]


def summary_row(interp: Interpretation, demo: bool = False) -> dict[str, Any]:
    """One CSV row: whether the probabilities came from demo weights, severity, heart rate, reported findings per
    group and every probability."""
    hr = interp.heart_rate or {}
    row: dict[str, Any] = {
        "record": interp.record,
        "demo": demo,
        "severity": interp.severity,
        "heart_rate_bpm": None if hr.get("heart_rate_bpm") is None else round(hr["heart_rate_bpm"], 1),
        "hr_quality": hr.get("quality", "not measured"),
        "n_beats": hr.get("n_beats", len(hr.get("r_peaks", []))) if hr else None,
        "rr_cv": None if hr.get("rr_cv") is None else round(hr["rr_cv"], 3),
        "rr_irregular": hr.get("irregular"),
        "rate_severity": interp.rate_severity,
        "findings": "; ".join(f"{f.label} ({f.status}, {f.severity})" for f in interp.reported_findings()),
        "discordances": len(interp.discordances),
        "disclaimer": "Research use only - not a diagnostic device",
    }
    for group in GROUP_ORDER:
        row[f"group_{group}"] = "; ".join(interp.groups[group])
    for label in LABELS:
        row[f"p_{label}"] = round(interp.probabilities[label], 4)
    return row


def write_summary_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*CSV_FIXED, *[f"p_{label}" for label in LABELS]])
        writer.writeheader()
        writer.writerows(rows)
    return path


def file_stem(record: str) -> str:
    """A record's name made safe as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in record) or "record"


def interpreter_findings(interp: Interpretation) -> list[dict[str, Any]]:
    """The reported findings as the exchange formats take them (:func:`ecgfm.results.fhir.finding_observation`,
    :mod:`ecgfm.results.hl7v2`): label, source, status, probability, group, severity, rules, notes."""
    return [asdict(f) for f in interp.reported_findings()]


def reliable_heart_rate(heart_rate: dict[str, Any] | None) -> float | None:
    """The measured heart rate (bpm) of an interpretation's ``heart_rate`` unless the detector called it unreliable."""
    hr = heart_rate or {}
    return hr.get("heart_rate_bpm") if hr.get("quality") != "unreliable" else None


def exchange_content(interp: Interpretation) -> dict[str, Any]:
    """What the exchange formats (FHIR, HL7 v2) carry of an interpretation: the 17 probabilities, the measured heart
    rate when reliable and each reported finding."""
    return {
        "probabilities": interp.probabilities,
        "heart_rate_bpm": reliable_heart_rate(interp.heart_rate),
        "findings": interpreter_findings(interp),
    }


def write_fhir_bundle(interp: Interpretation, out_dir: str | Path, demo: bool = False) -> Path:
    """``<record>.fhir.json``: a FHIR R4 Bundle (:func:`ecgfm.results.fhir.bundle`) of the interpretation: the
    measured heart rate when reliable, each reported finding (SNOMED CT coded) with its probability, and the 17
    probabilities."""
    from ecgfm.results.fhir import bundle

    resource = bundle(**exchange_content(interp), demo=demo)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{file_stem(interp.record)}.fhir.json"
    path.write_text(json.dumps(resource, indent=1), encoding="utf-8")
    return path


def write_hl7v2_message(interp: Interpretation, out_dir: str | Path, demo: bool = False) -> Path:
    """``<record>.hl7``: an HL7 v2.5.1 ORU^R01 message (:func:`ecgfm.results.hl7v2.oru_r01`, ER7) of the
    interpretation: the 17 probabilities, the measured heart rate when reliable and each reported finding."""
    from ecgfm.results.hl7v2 import oru_r01

    message = oru_r01(**exchange_content(interp), demo=demo)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{file_stem(interp.record)}.hl7"
    path.write_bytes(message.encode("utf-8"))
    return path


def write_reports(
    interp: Interpretation,
    out_dir: str | Path,
    record: Any | None = None,
    meta: dict[str, Any] | None = None,
    saliency: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<record>.txt``, ``<record>.json`` and ``<record>.html`` into ``out_dir``.

    ``record`` (an :class:`ecgfm.records.record.ECGRecord`) adds the ECG plot to the HTML report; ``saliency`` (the
    ``/clinical`` body's ``saliency``) shades its lead panels by where the model attended and adds a lead II rhythm
    strip with the saliency band under it (:func:`plot_ecg_png`), and the note :data:`SALIENCY_NOTE`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(interp.record)
    png = None
    if record is not None:
        hr = interp.heart_rate or {}
        png = plot_ecg_png(
            record.signal, record.fs, record.lead_names, hr.get("r_peaks"), hr.get("lead"), saliency=saliency
        )
    paths = {"txt": out / f"{stem}.txt", "json": out / f"{stem}.json", "html": out / f"{stem}.html"}
    paths["txt"].write_text(render_text(interp, meta), encoding="utf-8")
    paths["json"].write_text(render_json(interp, meta), encoding="utf-8")
    paths["html"].write_text(
        render_html(interp, png, meta, saliency=png is not None and bool(saliency)), encoding="utf-8"
    )
    return paths

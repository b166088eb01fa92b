"""The results of an evaluation as files: ``metrics.json`` (everything), ``metrics.csv`` (one row per label and
threshold) and ``report.html`` (for a clinician: what was measured on how many records, the tables, and ROC,
precision-recall and reliability plots drawn with matplotlib and embedded as PNG; no outside resources)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

POINT_KEYS = ("sensitivity", "specificity", "ppv", "npv", "f1")
THRESHOLD_NAMES = {"interpreter": "interpreter's threshold (in force)", "chosen": "chosen threshold"}


def write_json(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _interval(values: list[float] | None) -> list[Any]:
    return [None, None] if values is None else values


def write_csv(document: dict[str, Any], path: Path) -> None:
    """One row per label and threshold in use (one row for a label that is not evaluable)."""
    columns = ["label", "evaluable", "reason", "n_records", "n_positive", "n_negative", "prevalence"]
    columns += ["auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high", "brier", "ece"]
    columns += ["threshold_kind", "threshold", "tp", "fp", "tn", "fn"]
    columns += [f"{key}{suffix}" for key in POINT_KEYS for suffix in ("", "_ci_low", "_ci_high")]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        for entry in document["labels"].values():
            row = {key: entry.get(key) for key in columns[:7]}
            if not entry["evaluable"]:
                writer.writerow(row)
                continue
            for key in ("auroc", "auprc"):
                row[key] = entry[key]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = _interval(entry[f"{key}_ci"])
            row |= {"brier": entry["brier"], "ece": entry["ece"]}
            for kind, point in entry["thresholds"].items():
                values = {"threshold_kind": kind, **{k: point[k] for k in ("threshold", "tp", "fp", "tn", "fn")}}
                for key in POINT_KEYS:
                    values[key] = point[key]
                    values[f"{key}_ci_low"], values[f"{key}_ci_high"] = _interval(point[f"{key}_ci"])
                writer.writerow(row | values)


def _figure_png(entry: dict[str, Any], plot: dict[str, Any]) -> str:
    """ROC, precision-recall and reliability of one label, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (roc, pr, rel) = plt.subplots(1, 3, figsize=(11, 3.4))
    markers = {"interpreter": ("s", "tab:orange"), "chosen": ("o", "tab:red")}
    roc.plot(plot["fpr"], plot["tpr"], color="tab:blue", label=f"AUROC {entry['auroc']:.3f}")
    roc.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    pr.plot(plot["recall"], plot["precision"], color="tab:blue", label=f"AUPRC {entry['auprc']:.3f}")
    pr.axhline(
        entry["prevalence"], color="0.7", linestyle="--", linewidth=1, label=f"prevalence {entry['prevalence']:.3f}"
    )
    for kind, point in entry["thresholds"].items():
        marker, color = markers[kind]
        name = f"{kind} ({point['threshold']:.3g})"
        roc.plot(1 - point["specificity"], point["sensitivity"], marker, color=color, label=name)
        if point["ppv"] is not None:
            pr.plot(point["sensitivity"], point["ppv"], marker, color=color, label=name)
    rel.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfect calibration")
    curve = entry["reliability"]
    rel.plot(
        [p["mean_predicted"] for p in curve],
        [p["fraction_positive"] for p in curve],
        "o-",
        color="tab:blue",
        label=f"ECE {entry['ece']:.3f}",
    )
    for axis, title, xlabel, ylabel in (
        (roc, "ROC", "1 - specificity", "sensitivity"),
        (pr, "precision-recall", "sensitivity (recall)", "PPV (precision)"),
        (rel, "reliability", "mean predicted probability", "fraction positive"),
    ):
        axis.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        axis.legend(fontsize=7, loc="lower right" if axis is roc else "best")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.15, top=0.91, wspace=0.28)  # cheaper than tight_layout
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "–"
    return _number(value) + ("" if interval is None else f" ({_number(interval[0])}–{_number(interval[1])})")


def _label_rows(document: dict[str, Any]) -> str:
    rows = []
    for entry in document["labels"].values():
        label = html.escape(entry["label"])
        counts = f"{entry['n_positive']} / {entry['n_negative']}"
        if not entry["evaluable"]:
            rows.append(
                f"<tr><td>{label}</td><td>{counts}</td><td colspan=9>not evaluable: "
                f"{html.escape(entry['reason'])}</td></tr>"
            )
            continue
        for kind, point in entry["thresholds"].items():
            cells = [
                label if kind == next(iter(entry["thresholds"])) else "",
                counts,
                _number(entry["prevalence"]),
                _with_interval(entry["auroc"], entry["auroc_ci"]),
                _with_interval(entry["auprc"], entry["auprc_ci"]),
                f"{THRESHOLD_NAMES[kind]}: {point['threshold']:.3g}",
                *(_with_interval(point[key], point[f"{key}_ci"]) for key in POINT_KEYS),
            ]
            rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return "\n".join(rows)


def _records_paragraph(document: dict[str, Any]) -> str:
    records = document["records"]
    parts = [
        f"<b>{records['n_matched']}</b> records had both a prediction and a reference label and were measured.",
    ]
    for key, what in (
        ("only_in_predictions", "had a prediction but no reference label (left out)"),
        ("only_in_labels", "had a reference label but no prediction (left out)"),
        ("failed_in_batch", "failed in ecgfm batch (no prediction; left out)"),
        ("without_dx_line", "WFDB headers had no '# Dx:' line (left out)"),
    ):
        if records[key]["count"]:
            shown = ", ".join(html.escape(name) for name in records[key]["records"][:20])
            more = " …" if records[key]["count"] > 20 else ""
            parts.append(f"{records[key]['count']} {what}: {shown}{more}.")
    return " ".join(parts)


def _unmapped_table(document: dict[str, Any]) -> str:
    codes = document["unmapped_codes"]
    if not codes:
        return ""
    rows = "".join(
        f"<tr><td>{c['code']}</td><td>{html.escape(c['name'] or 'not in the challenge mapping')}</td>"
        f"<td>{c['records']}</td></tr>"
        for c in codes
    )
    return (
        "<h2>SNOMED CT codes that map to no ECG-FM label</h2><p>These diagnoses are in the reference labels but "
        "ECG-FM has no label for them; they are not part of any figure above (names: PhysioNet/CinC Challenge "
        "2021 mapping).</p><table><tr><th>code</th><th>name</th><th>records</th></tr>" + rows + "</table>"
    )


def write_html(document: dict[str, Any], plots: dict[str, dict[str, Any]], path: Path) -> None:
    macro = document["macro"]
    bootstrap = document["bootstrap"]
    figures = "\n".join(
        f"<h3>{html.escape(label)}</h3><p>{plot['entry']['n_positive']} positive and {plot['entry']['n_negative']} "
        f"negative records.</p><img alt='ROC, precision-recall and reliability of {html.escape(label)}' "
        f"src='data:image/png;base64,{_figure_png(plot['entry'], plot)}'>"
        for label, plot in plots.items()
    )
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            "label",
            "positive / negative",
            "prevalence",
            "AUROC (95% CI)",
            "AUPRC (95% CI)",
            "threshold",
            "sensitivity",
            "specificity",
            "PPV",
            "NPV",
            "F1",
        )
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ECG-FM site evaluation</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:0.85em}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}
.warning{{background:#fff3cd;border:1px solid #e0c36a;padding:0.6em}}img{{max-width:100%}}</style></head><body>
<h1>ECG-FM on this site's labelled ECGs</h1>
<p class="warning">{html.escape(document["research_use"])}</p>
<h2>What was measured</h2>
<p>Predictions: {html.escape(document["predictions"]["source"])} ({html.escape(document["predictions"]["kind"])},
{document["predictions"]["n_records"]} records). Reference labels: {html.escape(document["reference"]["source"])}
({html.escape(document["reference"]["form"])}, {document["reference"]["n_records"]} records).</p>
<p>{_records_paragraph(document)}</p>
<p>Averaged over the {macro["n_labels"]} evaluable labels (each label counts once): AUROC
{_number(macro["auroc"])}, AUPRC {_number(macro["auprc"])}, Brier score {_number(macro["brier"])}.</p>
<h2>How to read it</h2>
<ul>
<li><b>Sensitivity</b>: of the records the reference calls positive, the share ECG-FM flags at the threshold.
<b>Specificity</b>: of the negative records, the share it leaves unflagged. <b>PPV</b> / <b>NPV</b>: of the
flagged / unflagged records, the share the reference agrees with; they depend on the prevalence here.</li>
<li><b>AUROC</b> (0.5: chance, 1: perfect ranking) does not depend on a threshold or on prevalence; <b>AUPRC</b>
does depend on prevalence (chance is the prevalence).</li>
<li>Intervals are 95 %: Wilson score intervals for sensitivity, specificity, PPV and NPV; bootstrap percentile
intervals ({bootstrap["n_resamples"]} resamples of the records, seed {bootstrap["seed"]}) for AUROC, AUPRC and
F1. Few positive records give wide intervals: read the interval, not only the number.</li>
<li><b>Calibration</b>: the Brier score (mean squared error of the probability, 0 is best) and the expected
calibration error (ECE); on the reliability plot, points on the diagonal mean a probability of 0.3 is right 30 %
of the time.</li>
<li>The <b>interpreter's threshold</b> is the one in force ({
        html.escape(str(document["interpreter_thresholds"]["source"]))
    }); the <b>chosen threshold</b> is {html.escape(document["threshold_choice"]["description"])}, written
to thresholds.yaml. A threshold chosen and measured on the same records looks better than it will on new ones:
confirm it on held-out records.</li>
<li>A label with no positive or no negative record is <b>not evaluable</b> and has no number.</li>
</ul>
<h2>Per label</h2>
<table><tr>{header}</tr>
{_label_rows(document)}
</table>
{_unmapped_table(document)}
<h2>Plots</h2>
{figures}
<p><small>{html.escape(document["written_by"])}; figures from scikit-learn, Wilson intervals from SciPy, plots
from matplotlib (docs/evaluation.md).</small></p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")

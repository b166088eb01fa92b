"""The interpreter's clinical contract, with every number transcribed from docs/clinical_methodology.md.

The literals below are copied from the document, not read from ``interpreter/thresholds.yaml``: a wrong value in
the YAML, the code or the document makes one of these tests fail. Each cut-off is tested at, just below and just
above it.
"""

from __future__ import annotations

import pytest

from ecgfm.labels import LABELS
from interpreter.findings import ConfigError, interpret, load_config, rate_severity, worst

# docs/clinical_methodology.md §2, "Groups and thresholds" (Structural is empty).
DOC_GROUPS: dict[str, tuple[str, ...]] = {
    "Rhythm": (
        "Sinus rhythm",
        "Tachycardia",
        "Bradycardia",
        "Atrial fibrillation",
        "Atrial flutter",
        "Supraventricular tachycardia with aberrancy",
        "Ventricular tachycardia",
        "Premature ventricular contraction",
    ),
    "Conduction": (
        "Atrioventricular block",
        "1st degree atrioventricular block",
        "Bifascicular block",
        "Right bundle branch block",
        "Left bundle branch block",
        "Accessory pathway conduction",
    ),
    "Ischemia": ("Infarction",),
    "Structural": (),
    "Other": ("Poor data quality", "Electronic pacemaker"),
}

CRITICAL_TACHYARRHYTHMIAS = ("Ventricular tachycardia", "Supraventricular tachycardia with aberrancy")

# §2, "Default thresholds and why": 0.5 (borderline zone 0.3-0.5), 0.4 (0.2-0.4) for the two critical labels.
DOC_THRESHOLDS: dict[str, tuple[float, float]] = {
    label: (0.4, 0.2) if label in CRITICAL_TACHYARRHYTHMIAS else (0.5, 0.3) for label in LABELS
}

# §2, "Severity of each label when present".
DOC_SEVERITY: dict[str, str] = {
    "Sinus rhythm": "normal",
    "Tachycardia": "borderline",
    "Bradycardia": "borderline",
    "Premature ventricular contraction": "borderline",
    "1st degree atrioventricular block": "borderline",
    "Poor data quality": "borderline",
    "Atrial fibrillation": "abnormal",
    "Atrial flutter": "abnormal",
    "Atrioventricular block": "abnormal",
    "Bifascicular block": "abnormal",
    "Right bundle branch block": "abnormal",
    "Left bundle branch block": "abnormal",
    "Accessory pathway conduction": "abnormal",
    "Infarction": "abnormal",
    "Electronic pacemaker": "abnormal",
    "Ventricular tachycardia": "critical",
    "Supraventricular tachycardia with aberrancy": "critical",
}

# §3, rule H7: < 40 critical, 40 ≤ HR < 50 abnormal, 50 ≤ HR < 60 borderline, 60 ≤ HR ≤ 100 normal,
# 100 < HR ≤ 120 borderline, 120 < HR ≤ 150 abnormal, > 150 critical; each cut-off at, below and above.
DOC_RATE_BANDS: list[tuple[float, str]] = [
    (39.9, "critical"),
    (40.0, "abnormal"),
    (40.1, "abnormal"),
    (49.9, "abnormal"),
    (50.0, "borderline"),
    (50.1, "borderline"),
    (59.9, "borderline"),
    (60.0, "normal"),
    (60.1, "normal"),
    (99.9, "normal"),
    (100.0, "normal"),
    (100.1, "borderline"),
    (119.9, "borderline"),
    (120.0, "borderline"),
    (120.1, "abnormal"),
    (149.9, "abnormal"),
    (150.0, "abnormal"),
    (150.1, "critical"),
]

EPS = 1e-6  # "just below" / "just above" a probability cut-off


def probs(**given: float) -> dict[str, float]:
    """All 17 labels at 0.0 except the given ones (keyword = label, spaces as underscores)."""
    p = dict.fromkeys(LABELS, 0.0)
    for key, value in given.items():
        label = key.replace("_", " ").strip()
        assert label in p, label
        p[label] = value
    return p


def only(label: str, p: float, **others: float) -> dict[str, float]:
    return {**probs(**others), label: p}


def hr(bpm: float | None, quality: str = "good", irregular: bool = False, rr_cv: float = 0.03) -> dict:
    return {
        "heart_rate_bpm": bpm,
        "quality": quality,
        "irregular": irregular,
        "rr_cv": rr_cv,
        "quality_reasons": [] if quality == "good" else ["only 2 beats detected"],
    }


def finding(interp, label: str):
    return next(f for f in interp.findings if f.label == label)


def test_the_documented_tables_cover_the_17_labels_once() -> None:
    grouped = [label for labels in DOC_GROUPS.values() for label in labels]
    assert sorted(grouped) == sorted(LABELS) and len(grouped) == 17
    assert sorted(DOC_SEVERITY) == sorted(LABELS)


def test_every_label_is_in_its_documented_group() -> None:
    groups = {f.label: f.group for f in interpret(probs(), None).findings}
    assert groups == {label: group for group, labels in DOC_GROUPS.items() for label in labels}


def test_reported_findings_are_listed_under_their_documented_groups() -> None:
    interp = interpret(dict.fromkeys(LABELS, 0.9), None)
    assert {group: sorted(labels) for group, labels in interp.groups.items()} == {
        group: sorted(labels) for group, labels in DOC_GROUPS.items()
    }


def test_the_default_configuration_states_the_documented_numbers() -> None:
    config = load_config()
    for label in LABELS:
        entry = config["labels"][label]
        assert (entry["threshold"], entry["borderline"], entry["severity"]) == (
            *DOC_THRESHOLDS[label],
            DOC_SEVERITY[label],
        ), label
    assert config["heart_rate"]["tachycardia_above_bpm"] == 100
    assert config["heart_rate"]["bradycardia_below_bpm"] == 60


@pytest.mark.parametrize("label", LABELS)
def test_t1_each_label_is_present_from_its_documented_threshold(label: str) -> None:
    threshold, _ = DOC_THRESHOLDS[label]
    assert finding(interpret(only(label, threshold - EPS), None), label).status == "possible"
    assert finding(interpret(only(label, threshold), None), label).status == "present"
    assert finding(interpret(only(label, threshold + EPS), None), label).status == "present"


@pytest.mark.parametrize("label", LABELS)
def test_t1_each_label_is_possible_from_its_documented_borderline(label: str) -> None:
    _, borderline = DOC_THRESHOLDS[label]
    assert finding(interpret(only(label, borderline - EPS), None), label).status == "absent"
    assert finding(interpret(only(label, borderline), None), label).status == "possible"
    assert finding(interpret(only(label, borderline + EPS), None), label).status == "possible"


@pytest.mark.parametrize("label", LABELS)
def test_t1_a_present_finding_has_its_documented_severity_and_sets_the_overall_one(label: str) -> None:
    interp = interpret(only(label, 0.95, Sinus_rhythm=0.95), None)
    assert finding(interp, label).severity == DOC_SEVERITY[label]
    assert interp.severity == DOC_SEVERITY[label]


@pytest.mark.parametrize("label", LABELS)
def test_t1_a_possible_finding_is_borderline_or_normal_for_the_normal_label(label: str) -> None:
    threshold, borderline = DOC_THRESHOLDS[label]
    f = finding(interpret(only(label, (threshold + borderline) / 2), None), label)
    assert f.status == "possible"
    assert f.severity == ("normal" if DOC_SEVERITY[label] == "normal" else "borderline")


def test_an_absent_finding_is_not_reported() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Infarction=0.29), hr(75))
    assert finding(interp, "Infarction").status == "absent"
    assert [f.label for f in interp.reported_findings()] == ["Sinus rhythm"]
    assert "Infarction" not in [f["label"] for f in interp.to_dict()["findings"]]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (("Premature ventricular contraction",), "borderline"),
        (("Premature ventricular contraction", "Right bundle branch block"), "abnormal"),
        (("Right bundle branch block", "Ventricular tachycardia", "Premature ventricular contraction"), "critical"),
    ],
)
def test_s1_the_overall_severity_is_the_worst_in_the_order_normal_borderline_abnormal_critical(
    labels: tuple[str, ...], expected: str
) -> None:
    p = probs(Sinus_rhythm=0.95) | dict.fromkeys(labels, 0.95)
    assert interpret(p, hr(75)).severity == expected


def test_s2_sinus_rhythm_alone_at_a_normal_rate_is_normal() -> None:
    interp = interpret(probs(Sinus_rhythm=0.5), hr(75))
    assert interp.severity == "normal" and interp.severity_reasons == []


def test_s2_a_possible_rhythm_finding_determines_the_rhythm() -> None:
    interp = interpret(probs(Sinus_rhythm=0.3), hr(75))
    assert interp.severity == "normal"
    assert not any(reason.startswith("S2") for reason in interp.severity_reasons)


def test_s2_no_rhythm_finding_makes_a_normal_record_borderline() -> None:
    interp = interpret(probs(Sinus_rhythm=0.3 - EPS), hr(75))
    assert interp.severity == "borderline"
    assert any(reason.startswith("S2") for reason in interp.severity_reasons)


def test_s2_a_non_rhythm_finding_does_not_determine_the_rhythm() -> None:
    interp = interpret(probs(Infarction=0.95), hr(75))
    assert interp.severity == "abnormal"
    assert any(reason.startswith("S2") for reason in interp.severity_reasons)


@pytest.mark.parametrize(("bpm", "band"), DOC_RATE_BANDS)
def test_h7_rate_band_at_and_around_each_documented_cut_off(bpm: float, band: str) -> None:
    assert rate_severity(bpm, load_config()) == band
    interp = interpret(probs(Sinus_rhythm=0.95), hr(bpm))
    assert interp.rate_severity == band
    assert (
        interp.severity == band
    )  # a rhythm-only ECG takes the rate band's severity (H1/H3, H4/H6 at least borderline)


@pytest.mark.parametrize(("bpm", "confirmed"), [(99.9, False), (100.0, False), (100.1, True)])
def test_h1_h2_the_model_s_tachycardia_needs_a_rate_above_100(bpm: float, confirmed: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Tachycardia=0.95), hr(bpm))
    f = finding(interp, "Tachycardia")
    if confirmed:
        assert (f.status, f.source, f.rules) == ("present", "model+heart_rate", ["T1", "H1"])
        assert f.severity == "borderline" and interp.discordances == []
    else:
        assert (f.status, f.source, f.rules) == ("discordant", "model+heart_rate", ["T1", "H2"])
        assert f.severity == "borderline" and len(interp.discordances) == 1
        assert interp.severity == "borderline"  # S3
        assert any(reason.startswith("S3") for reason in interp.severity_reasons)


@pytest.mark.parametrize(("bpm", "added"), [(99.9, False), (100.0, False), (100.1, True)])
def test_h3_a_measured_rate_above_100_adds_tachycardia_the_model_missed(bpm: float, added: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95), hr(bpm))
    f = finding(interp, "Tachycardia")
    if added:
        assert (f.status, f.source, f.rules, f.severity) == ("present", "heart_rate", ["T1", "H3"], "borderline")
        assert len(interp.discordances) == 1
    else:
        assert (f.status, f.rules) == ("absent", ["T1"]) and interp.discordances == []


@pytest.mark.parametrize(("bpm", "confirmed"), [(99.9, False), (100.0, False), (100.1, True)])
def test_h1_h2_a_possible_tachycardia_is_confirmed_above_100_and_dropped_otherwise(bpm: float, confirmed: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Tachycardia=0.4), hr(bpm))
    f = finding(interp, "Tachycardia")
    assert interp.discordances == []
    assert f.status == ("present" if confirmed else "absent")
    assert f.rules == ["T1", "H1" if confirmed else "H2"]


@pytest.mark.parametrize(("bpm", "confirmed"), [(59.9, True), (60.0, False), (60.1, False)])
def test_h4_h5_the_model_s_bradycardia_needs_a_rate_below_60(bpm: float, confirmed: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Bradycardia=0.95), hr(bpm))
    f = finding(interp, "Bradycardia")
    if confirmed:
        assert (f.status, f.source, f.rules) == ("present", "model+heart_rate", ["T1", "H4"])
        assert f.severity == "borderline" and interp.discordances == []
    else:
        assert (f.status, f.source, f.rules) == ("discordant", "model+heart_rate", ["T1", "H5"])
        assert f.severity == "borderline" and len(interp.discordances) == 1
        assert interp.severity == "borderline"  # S3


@pytest.mark.parametrize(("bpm", "added"), [(59.9, True), (60.0, False), (60.1, False)])
def test_h6_a_measured_rate_below_60_adds_bradycardia_the_model_missed(bpm: float, added: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95), hr(bpm))
    f = finding(interp, "Bradycardia")
    if added:
        assert (f.status, f.source, f.rules, f.severity) == ("present", "heart_rate", ["T1", "H6"], "borderline")
        assert len(interp.discordances) == 1
    else:
        assert (f.status, f.rules) == ("absent", ["T1"]) and interp.discordances == []


@pytest.mark.parametrize(("bpm", "confirmed"), [(59.9, True), (60.0, False), (60.1, False)])
def test_h4_h5_a_possible_bradycardia_is_confirmed_below_60_and_dropped_otherwise(bpm: float, confirmed: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Bradycardia=0.4), hr(bpm))
    f = finding(interp, "Bradycardia")
    assert interp.discordances == []
    assert f.status == ("present" if confirmed else "absent")
    assert f.rules == ["T1", "H4" if confirmed else "H5"]


@pytest.mark.parametrize(("bpm", "severity"), [(110, "borderline"), (130, "abnormal"), (160, "critical")])
def test_h1_a_confirmed_tachycardia_takes_the_worse_of_its_rate_band_and_borderline(bpm: float, severity: str) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Tachycardia=0.95), hr(bpm))
    assert finding(interp, "Tachycardia").severity == severity
    assert interp.severity == severity


@pytest.mark.parametrize(("bpm", "severity"), [(55, "borderline"), (45, "abnormal"), (35, "critical")])
def test_h6_an_added_bradycardia_takes_the_worse_of_its_rate_band_and_borderline(bpm: float, severity: str) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95), hr(bpm))
    assert finding(interp, "Bradycardia").severity == severity
    assert interp.severity == severity


def test_h7_a_band_other_than_normal_is_given_as_a_reason() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Bradycardia=0.95), hr(45))
    assert any(reason.startswith("H7") and "abnormal" in reason for reason in interp.severity_reasons)
    assert not any(r.startswith("H7") for r in interpret(probs(Sinus_rhythm=0.95), hr(75)).severity_reasons)


@pytest.mark.parametrize("heart_rate", [None, hr(170, quality="unreliable"), hr(None)])
def test_h8_without_a_reliable_rate_no_rate_rule_applies(heart_rate: dict | None) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Tachycardia=0.95), heart_rate)
    f = finding(interp, "Tachycardia")
    assert (f.status, f.source, f.rules, f.severity) == ("present", "model", ["T1"], "borderline")
    assert interp.rate_severity is None and interp.discordances == []
    assert interp.severity == "borderline"  # not the critical band of 170 bpm
    assert any(note.startswith("H8") for note in interp.notes)


def test_h8_an_unreliable_rate_says_why_the_rules_were_not_applied() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95), hr(80, quality="unreliable"))
    assert any(note.startswith("H8") and "only 2 beats detected" in note for note in interp.notes)
    assert not any(note.startswith("H8") for note in interpret(probs(Sinus_rhythm=0.95), hr(80)).notes)


def test_h9_an_irregular_rhythm_without_atrial_fibrillation_or_flutter_adds_a_note() -> None:
    irregular = hr(80, irregular=True, rr_cv=0.25)
    interp = interpret(probs(Sinus_rhythm=0.95), irregular)
    assert any(note.startswith("H9") and "0.25" in note for note in interp.notes)
    assert interp.severity == "normal"  # a note, no severity change


@pytest.mark.parametrize(
    "given", [{"Atrial_fibrillation": 0.95}, {"Atrial_flutter": 0.95}, {"Atrial_fibrillation": 0.3}]
)
def test_h9_no_note_when_atrial_fibrillation_or_flutter_is_reported(given: dict[str, float]) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, **given), hr(80, irregular=True, rr_cv=0.25))
    assert not any(note.startswith("H9") for note in interp.notes)


@pytest.mark.parametrize("heart_rate", [hr(80, irregular=False), hr(80, quality="unreliable", irregular=True)])
def test_h9_no_note_for_a_regular_rhythm_or_an_unreliable_rate(heart_rate: dict) -> None:
    assert not any(note.startswith("H9") for note in interpret(probs(Sinus_rhythm=0.95), heart_rate).notes)


@pytest.mark.parametrize(("p", "noted"), [(0.5 - EPS, False), (0.5, True), (0.5 + EPS, True)])
def test_q1_poor_data_quality_present_adds_a_caution(p: float, noted: bool) -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Poor_data_quality=p), hr(75))
    assert any(note.startswith("Q1") for note in interp.notes) is noted


# --- What the report says about the rate rules: the measured rate, the documented criterion, the probability.


def test_h1_the_confirmation_names_the_rate_and_the_criterion() -> None:
    f = finding(interpret(probs(Sinus_rhythm=0.95, Tachycardia=0.95), hr(127)), "Tachycardia")
    assert f.notes == ["confirmed by the measured heart rate 127 bpm (> 100 bpm)"]


def test_h2_the_discordance_names_the_probability_the_rate_and_the_criterion() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Tachycardia=0.87), hr(72))
    assert interp.discordances == [
        "Tachycardia: the model reports it (p=0.87) but the measured heart rate is 72 bpm (not > 100 bpm); "
        "the measured rate overrides the model — discordant, review the ECG"
    ]
    assert finding(interp, "Tachycardia").notes == [
        "overridden: the measured heart rate 72 bpm does not meet > 100 bpm"
    ]


def test_h6_the_added_finding_says_the_model_did_not_report_it() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95, Bradycardia=0.12), hr(48))
    assert interp.discordances == [
        "Bradycardia: measured heart rate 48 bpm (< 60 bpm) but the model's probability is 0.12 (below its "
        "threshold); reported from the measured rate — discordant, review the ECG"
    ]
    assert finding(interp, "Bradycardia").notes == [
        "added from the measured heart rate; the model did not report it (discordant)"
    ]


def test_h5_a_dropped_possible_finding_says_why_and_is_normal() -> None:
    f = finding(interpret(probs(Sinus_rhythm=0.95, Bradycardia=0.4), hr(72)), "Bradycardia")
    assert (f.status, f.severity) == ("absent", "normal")
    assert f.notes == ["not supported by the measured heart rate 72 bpm"]


def test_a_user_file_that_gives_a_label_a_number_instead_of_settings_is_refused(tmp_path) -> None:
    user = tmp_path / "bad.yaml"
    user.write_text("labels:\n  Infarction: 0.4\n")
    with pytest.raises(ConfigError, match="no settings for 'Infarction'"):
        load_config(user)


def test_a_user_file_does_not_change_the_defaults_of_a_later_load(tmp_path) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("labels:\n  Infarction: {threshold: 0.7}\nheart_rate:\n  low: [{below: 30, severity: critical}]\n")
    assert load_config(user)["labels"]["Infarction"]["threshold"] == 0.7
    assert load_config()["labels"]["Infarction"]["threshold"] == 0.5
    assert rate_severity(35, load_config(user)) == "normal" and rate_severity(35, load_config()) == "critical"


@pytest.mark.parametrize("label", LABELS)
def test_t1_each_finding_carries_its_probability_and_documented_threshold(label: str) -> None:
    threshold, borderline = DOC_THRESHOLDS[label]
    for p in (0.95, (threshold + borderline) / 2, borderline / 2):
        f = finding(interpret(only(label, p), None), label)
        assert (f.probability, f.threshold) == (p, threshold)
    assert finding(interpret(only(label, borderline / 2), None), label).severity == "normal"  # absent


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_probabilities_of_exactly_0_and_1_are_accepted(p: float) -> None:
    assert finding(interpret(dict.fromkeys(LABELS, p), None), "Infarction").status == ("present" if p else "absent")


def test_the_worst_of_no_severities_is_normal() -> None:
    assert worst([]) == "normal"
    assert worst(["borderline", "critical", "normal", "abnormal"]) == "critical"


def test_h8_the_note_says_why_the_rate_rules_were_not_applied() -> None:
    assert interpret(probs(Sinus_rhythm=0.95), None).notes == [
        "H8: heart-rate rules not applied (no signal was given); tachycardia/bradycardia are the model's findings only"
    ]
    two_reasons = hr(80, quality="unreliable") | {"quality_reasons": ["only 2 beats detected", "leads disagree"]}
    assert (
        interpret(probs(Sinus_rhythm=0.95), two_reasons)
        .notes[0]
        .startswith("H8: heart-rate rules not applied (only 2 beats detected; leads disagree); ")
    )
    assert "(heart rate unavailable)" in interpret(probs(Sinus_rhythm=0.95), hr(None)).notes[0]


def test_h9_the_note_points_to_the_rhythm_strip() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95), hr(80, irregular=True, rr_cv=0.25))
    assert interp.notes == [
        "H9: RR intervals are irregular (coefficient of variation 0.25) although the model reports no atrial "
        "fibrillation/flutter: consider sinus arrhythmia, ectopic beats or missed AF — review the rhythm strip"
    ]


def test_s1_the_rate_band_enters_the_overall_severity_by_itself(tmp_path) -> None:
    user = tmp_path / "late_tachycardia.yaml"
    user.write_text("heart_rate:\n  tachycardia_above_bpm: 130\n")
    interp = interpret(probs(Sinus_rhythm=0.95), hr(125), config=load_config(user))
    assert finding(interp, "Tachycardia").status == "absent"  # 125 bpm is not > 130
    assert (interp.rate_severity, interp.severity) == ("abnormal", "abnormal")  # 120 < 125 ≤ 150


@pytest.mark.parametrize(
    ("threshold", "accepted"), [(0.0, False), (0.001, True), (1.0, True), (1.001, False), ("0.5", False)]
)
def test_a_user_threshold_must_be_a_number_above_0_and_at_most_1(tmp_path, threshold, accepted: bool) -> None:
    user = tmp_path / "my.yaml"
    user.write_text(f"labels:\n  Infarction: {{threshold: {threshold!r}, borderline: 0.0}}\n")
    if accepted:
        assert load_config(user)["labels"]["Infarction"]["threshold"] == threshold
    else:
        with pytest.raises(ConfigError, match=r"labels\.Infarction\.threshold must be a number in \(0, 1\]"):
            load_config(user)


def test_an_interpretation_keeps_its_inputs_and_names_its_thresholds(tmp_path) -> None:
    p, rate = probs(Sinus_rhythm=0.95), hr(75)
    interp = interpret(p, rate, record="JS36330")
    assert (interp.record, interp.probabilities, interp.heart_rate) == ("JS36330", p, rate)
    assert interp.thresholds_source == "default"
    user = tmp_path / "site.yaml"
    user.write_text("labels:\n  Infarction: {threshold: 0.6}\n")
    assert interpret(p, rate, config=load_config(user)).thresholds_source == str(user)

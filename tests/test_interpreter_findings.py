"""Groups, thresholds, severity and heart-rate rules (docs/clinical_methodology.md), one rule per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecgfm.labels import LABELS
from interpreter.findings import ConfigError, default_config_path, interpret, load_config

CONFIG = yaml.safe_load(default_config_path().read_text())


def probs(**high: float) -> dict[str, float]:
    """All labels at 0.02 except the given ones (keyword = label with spaces as underscores)."""
    p = dict.fromkeys(LABELS, 0.02)
    for key, value in high.items():
        label = key.replace("_", " ").strip()
        assert label in p, label
        p[label] = value
    return p


def hr(bpm: float, quality: str = "good", irregular: bool = False, rr_cv: float = 0.03) -> dict:
    return {
        "heart_rate_bpm": bpm,
        "quality": quality,
        "irregular": irregular,
        "rr_cv": rr_cv,
        "quality_reasons": [] if quality == "good" else ["leads disagree"],
    }


def finding(interp, label: str):
    return next(f for f in interp.findings if f.label == label)


def test_every_label_is_in_exactly_one_group_as_the_issue_lists() -> None:
    interp = interpret(probs())
    groups = {f.label: f.group for f in interp.findings}
    assert sorted(groups) == sorted(LABELS)
    assert groups["Premature ventricular contraction"] == "Rhythm"
    assert groups["Accessory pathway conduction"] == "Conduction"
    assert groups["Infarction"] == "Ischemia"
    assert groups["Electronic pacemaker"] == "Other"
    assert groups["Poor data quality"] == "Other"


def test_structural_group_is_empty_with_a_note() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9), hr(70))
    assert interp.groups["Structural"] == []
    assert "no structural labels" in interp.group_notes["Structural"]


def test_t1_probability_at_threshold_is_present_and_in_borderline_zone_is_possible() -> None:
    thr = CONFIG["labels"]["Infarction"]["threshold"]
    low = CONFIG["labels"]["Infarction"]["borderline"]
    assert finding(interpret(probs(Infarction=thr)), "Infarction").status == "present"
    possible = finding(interpret(probs(Infarction=(thr + low) / 2)), "Infarction")
    assert possible.status == "possible"
    assert possible.severity == "borderline"
    assert finding(interpret(probs(Infarction=low / 2)), "Infarction").status == "absent"


def test_s1_normal_sinus_rhythm_at_normal_rate_is_normal() -> None:
    interp = interpret(probs(Sinus_rhythm=0.95), hr(75))
    assert interp.severity == "normal"
    assert [f.label for f in interp.reported_findings()] == ["Sinus rhythm"]


def test_s1_ventricular_tachycardia_is_critical() -> None:
    interp = interpret(probs(Ventricular_tachycardia=0.8), hr(170))
    assert finding(interp, "Ventricular tachycardia").severity == "critical"
    assert interp.severity == "critical"


def test_s1_overall_severity_is_the_worst_finding() -> None:
    interp = interpret(
        probs(Sinus_rhythm=0.9, Right_bundle_branch_block=0.9, _1st_degree_atrioventricular_block=0.0), hr(70)
    )
    assert (
        finding(interp, "Right bundle branch block").severity
        == CONFIG["labels"]["Right bundle branch block"]["severity"]
    )
    assert interp.severity == "abnormal"


def test_s2_no_rhythm_finding_makes_the_record_at_least_borderline() -> None:
    interp = interpret(probs(), hr(75))
    assert interp.severity == "borderline"
    assert any(r.startswith("S2") for r in interp.severity_reasons)


def test_h1_model_tachycardia_confirmed_by_measured_rate() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Tachycardia=0.9), hr(127))
    f = finding(interp, "Tachycardia")
    assert (f.status, f.source) == ("present", "model+heart_rate")
    assert "H1" in f.rules
    assert interp.discordances == []


def test_h2_model_tachycardia_with_normal_rate_is_discordant_and_overridden() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Tachycardia=0.9), hr(72))
    f = finding(interp, "Tachycardia")
    assert f.status == "discordant"
    assert "H2" in f.rules
    assert len(interp.discordances) == 1
    assert interp.severity == "borderline"


def test_h3_measured_tachycardia_missed_by_model_is_added_and_discordant() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9), hr(130))
    f = finding(interp, "Tachycardia")
    assert (f.status, f.source) == ("present", "heart_rate")
    assert "H3" in f.rules
    assert interp.discordances


def test_h4_model_bradycardia_confirmed_by_measured_rate() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Bradycardia=0.9), hr(50))
    f = finding(interp, "Bradycardia")
    assert f.status == "present"
    assert "H4" in f.rules


def test_h5_model_bradycardia_with_normal_rate_is_discordant() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Bradycardia=0.9), hr(80))
    assert finding(interp, "Bradycardia").status == "discordant"
    assert "H5" in finding(interp, "Bradycardia").rules


def test_h5_possible_rate_finding_without_rate_support_is_dropped_without_discordance() -> None:
    thr = CONFIG["labels"]["Bradycardia"]["threshold"]
    interp = interpret(probs(Sinus_rhythm=0.9, Bradycardia=thr - 0.05), hr(80))
    assert finding(interp, "Bradycardia").status == "absent"
    assert interp.discordances == []


def test_h6_measured_bradycardia_missed_by_model_is_added() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9), hr(52))
    f = finding(interp, "Bradycardia")
    assert (f.status, f.source) == ("present", "heart_rate")
    assert "H6" in f.rules


@pytest.mark.parametrize(
    ("bpm", "expected"),
    [
        (35, "critical"),
        (45, "abnormal"),
        (55, "borderline"),
        (80, "normal"),
        (110, "borderline"),
        (135, "abnormal"),
        (165, "critical"),
    ],
)
def test_h7_rate_band_sets_severity_of_rhythm_only_ecg(bpm: float, expected: str) -> None:
    interp = interpret(probs(Sinus_rhythm=0.9), hr(bpm))
    assert interp.rate_severity == expected
    assert interp.severity == expected


def test_h7_critical_rate_overrides_milder_findings() -> None:
    p = probs(Sinus_rhythm=0.9, Bradycardia=0.9, _1st_degree_atrioventricular_block=0.9)
    interp = interpret(p, hr(36))
    assert interp.severity == "critical"


def test_h8_unreliable_heart_rate_keeps_model_rate_findings() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Tachycardia=0.9), hr(72, quality="unreliable"))
    f = finding(interp, "Tachycardia")
    assert (f.status, f.source) == ("present", "model")
    assert interp.rate_severity is None
    assert any(n.startswith("H8") for n in interp.notes)


def test_h8_no_signal_keeps_model_findings() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Bradycardia=0.9), None)
    assert finding(interp, "Bradycardia").status == "present"
    assert any(n.startswith("H8") for n in interp.notes)


def test_h9_irregular_rr_without_af_adds_a_note() -> None:
    irregular = hr(80, irregular=True, rr_cv=0.25)
    assert any(n.startswith("H9") for n in interpret(probs(Sinus_rhythm=0.9), irregular).notes)
    assert not any(n.startswith("H9") for n in interpret(probs(Atrial_fibrillation=0.9), irregular).notes)


def test_q1_poor_data_quality_adds_a_caution() -> None:
    interp = interpret(probs(Sinus_rhythm=0.9, Poor_data_quality=0.9), hr(70))
    assert any(n.startswith("Q1") for n in interp.notes)


def test_user_thresholds_override_defaults(tmp_path: Path) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("labels:\n  Infarction: {threshold: 0.3, borderline: 0.1}\n")
    config = load_config(user)
    assert config["labels"]["Infarction"]["severity"] == CONFIG["labels"]["Infarction"]["severity"]
    p = probs(Sinus_rhythm=0.9, Infarction=0.35)
    assert finding(interpret(p), "Infarction").status == "possible"
    assert finding(interpret(p, config=config), "Infarction").status == "present"


def test_invalid_user_thresholds_are_rejected(tmp_path: Path) -> None:
    user = tmp_path / "bad.yaml"
    user.write_text("labels:\n  Infarction: {threshold: 0.3, borderline: 0.6}\n")
    with pytest.raises(ConfigError, match="Infarction"):
        load_config(user)


def test_missing_or_out_of_range_probabilities_are_rejected() -> None:
    p = probs()
    del p["Infarction"]
    with pytest.raises(ValueError, match="Infarction"):
        interpret(p)
    with pytest.raises(ValueError, match="Infarction"):
        interpret(probs(Infarction=1.5))


# A setting the interpreter does not read would do nothing without a word: every key outside the layout is refused,
# by its dotted name, in a user file and in the default file alike.
UNKNOWN_KEYS = [
    ("severity_levels: [normal, borderline, abnormal, critical, fatal]\n", "severity_levels"),
    ("labels:\n  Infraction: {threshold: 0.4}\n", "labels.Infraction"),
    ("labels:\n  Infarction: {treshold: 0.4}\n", "labels.Infarction.treshold"),
    ("groups:\n  Structual: []\n", "groups.Structual"),
    ("group_notes:\n  Ischaemia: a note\n", "group_notes.Ischaemia"),
    ("heart_rate:\n  tachycardia_bpm: 110\n", "heart_rate.tachycardia_bpm"),
    (
        "heart_rate:\n  low:\n    - {below: 40, severity: critical}\n    - {bellow: 50, severity: abnormal}\n",
        "heart_rate.low[1].bellow",
    ),
    ("heart_rate:\n  high:\n    - {below: 150, severity: critical}\n", "heart_rate.high[0].below"),
    ("source: site.yaml\n", "source"),
]


@pytest.mark.parametrize(("text", "key"), UNKNOWN_KEYS, ids=[key for _, key in UNKNOWN_KEYS])
def test_a_key_the_interpreter_does_not_read_is_refused_by_name(tmp_path: Path, text: str, key: str) -> None:
    user = tmp_path / "site.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(user)
    assert str(refused.value).startswith(f"{user}: unknown key {key!r} (it would do nothing); ")


def test_the_refusal_lists_the_keys_that_are_read(tmp_path: Path) -> None:
    user = tmp_path / "site.yaml"
    user.write_text("labels:\n  Infarction: {treshold: 0.4}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(user)
    assert str(refused.value) == (
        f"{user}: unknown key 'labels.Infarction.treshold' (it would do nothing); "
        "a label's keys are: threshold, borderline, severity"
    )


def test_every_key_of_the_documented_layout_is_accepted_in_a_user_file(tmp_path: Path) -> None:
    user = tmp_path / "site.yaml"
    user.write_text(
        "version: 1\ngroups: {Structural: []}\ngroup_notes: {Ischemia: a site note}\n"
        "labels:\n  Infarction: {threshold: 0.6, borderline: 0.4, severity: critical}\n"
        "heart_rate:\n  bradycardia_below_bpm: 55\n  tachycardia_above_bpm: 105\n"
        "  low: [{below: 35, severity: critical}]\n  high: [{above: 160, severity: critical}]\n"
    )
    config = load_config(user)
    assert config["labels"]["Infarction"] == {"threshold": 0.6, "borderline": 0.4, "severity": "critical"}
    assert config["heart_rate"]["low"] == [{"below": 35, "severity": "critical"}]
    assert interpret(probs(Sinus_rhythm=0.9), config=config).group_notes["Ischemia"] == "a site note"


def test_a_thresholds_file_of_another_version_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "site.yaml"
    user.write_text("version: 2\n")
    with pytest.raises(ConfigError, match=r"site\.yaml: version: this interpreter reads version 1, got 2$"):
        load_config(user)


def test_the_default_file_has_no_severity_levels_and_would_be_refused_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The severity order is the rules' (normal < borderline < abnormal < critical), not a setting: the shipped
    file does not pretend otherwise, and the loader checks the default file's keys as it checks a user file's."""
    assert "severity_levels" not in CONFIG and set(CONFIG) == {
        "version",
        "groups",
        "group_notes",
        "labels",
        "heart_rate",
    }
    edited = tmp_path / "thresholds.yaml"
    edited.write_text(default_config_path().read_text() + "severity_levels: [critical, abnormal, borderline, normal]\n")
    monkeypatch.setattr("interpreter.findings.default_config_path", lambda: edited)
    with pytest.raises(ConfigError, match=rf"^{edited}: unknown key 'severity_levels' \(it would do nothing\)"):
        load_config()

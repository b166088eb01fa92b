"""The SNOMED CT table (ecgfm/terminology.py) against its source: the PhysioNet/CinC Challenge 2021 mapping files."""

from __future__ import annotations

import csv
import re

import pytest

from ecgfm import terminology
from ecgfm.labels import LABELS
from tests.conftest import SHARED_DIR

CHALLENGE_DIR = SHARED_DIR / "data" / "physionetchallenges_evaluation-2021"


def challenge_concepts() -> dict[str, str]:
    """code -> the challenge's name, from both mapping files."""
    concepts = {}
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        with (CHALLENGE_DIR / name).open(newline="") as file:
            for row in csv.DictReader(file):
                concepts[row["SNOMEDCTCode"]] = re.sub(r"\s+", " ", row["Dx"]).strip().lower()
    return concepts


# The labels that results code, by the challenge's abbreviation of the concept (dx_mapping_*.csv, column
# Abbreviation); the other labels travel as text only. Exchange-format tests read the expected code and name from the
# challenge's files through this, not from ecgfm.terminology.
CODED_LABELS = {
    "Sinus rhythm": "NSR",
    "Premature ventricular contraction": "PVC",
    "Ventricular tachycardia": "VTach",
    "Atrial fibrillation": "AF",
    "Atrial flutter": "AFL",
    "Bradycardia": "Brady",
    "Accessory pathway conduction": "VPEx",
    "Atrioventricular block": "AVB",
    "1st degree atrioventricular block": "IAVB",
    "Right bundle branch block": "RBBB",
    "Left bundle branch block": "LBBB",
    "Infarction": "MI",
    "Electronic pacemaker": "PR",
}


def challenge_code_of(label: str) -> tuple[str, str] | None:
    """(SNOMED CT code, the challenge's name) of the concept that codes ``label``, read from the challenge's files;
    ``None`` for a label that travels as text only."""
    if label not in CODED_LABELS:
        return None
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        with (CHALLENGE_DIR / name).open(newline="") as file:
            for row in csv.DictReader(file):
                if row["Abbreviation"] == CODED_LABELS[label]:
                    return row["SNOMEDCTCode"], re.sub(r"\s+", " ", row["Dx"]).strip()
    raise AssertionError(f"{CODED_LABELS[label]} is not in the challenge's mapping")


def all_concepts() -> set[terminology.Concept]:
    rows = terminology.TERMINOLOGY.values()
    found = {concept for row in rows for concept in row.implied_by} | {row.code for row in rows if row.code}
    found |= {concept for row in rows for group in row.implied_by_all_of for concept in group}
    return found | {row.code for row in terminology.FINDINGS.values() if row.code}


def test_every_code_is_the_challenges_with_its_name() -> None:
    concepts = challenge_concepts()
    assert len(concepts) > 100  # both files were read
    for concept in all_concepts():
        assert concept.code in concepts, f"{concept} is not in the challenge's mapping"
        assert concepts[concept.code] == concept.term.lower(), concept


def test_one_row_per_label_in_order_and_a_label_code_implies_its_label() -> None:
    assert tuple(terminology.TERMINOLOGY) == LABELS
    for label, row in terminology.TERMINOLOGY.items():
        if row.code is not None:
            assert row.code in row.implied_by
            assert label in terminology.labels_implied_by({row.code.code})
        else:
            assert row.note, f"{label}: text only must say why"


def test_the_challenges_equivalent_pairs_map_to_the_same_labels() -> None:
    """The notes column of dx_mapping_scored.csv: 'We score A and B as the same diagnosis'."""
    pairs = []
    with (CHALLENGE_DIR / "dx_mapping_scored.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            if match := re.search(r"score (\d+) and (\d+) as the same", row["Notes"]):
                pairs.append(match.groups())
    assert len(pairs) >= 4
    mapped = terminology.mapped_codes()
    for first, second in pairs:
        assert terminology.labels_implied_by({first}) == terminology.labels_implied_by({second}), (first, second)
        assert (first in mapped) == (second in mapped)


@pytest.mark.parametrize(
    ("codes", "labels"),
    [
        ({"426177001"}, {"Sinus rhythm", "Bradycardia"}),  # sinus bradycardia
        ({"195080001"}, {"Atrial fibrillation", "Atrial flutter"}),
        ({"426183003"}, {"Atrioventricular block"}),  # Mobitz II
        ({"270492004"}, {"Atrioventricular block", "1st degree atrioventricular block"}),
        ({"59118001"}, {"Right bundle branch block"}),
        ({"59118001", "445118002"}, {"Right bundle branch block", "Bifascicular block"}),
        ({"445118002"}, set()),  # a fascicular block alone is not bifascicular
        ({"164947007", "251146004"}, set()),  # prolonged PR, low QRS voltages: no label
    ],
)
def test_labels_implied_by_codes(codes: set[str], labels: set[str]) -> None:
    assert terminology.labels_implied_by(codes) == labels


def test_the_labels_that_results_code_are_the_challenges_concepts() -> None:
    for label in LABELS:
        expected = challenge_code_of(label)
        concept = terminology.label_code(label)
        assert (concept.code, concept.term) == expected if concept else expected is None, label


def test_no_label_is_coded_more_specifically_than_it_means() -> None:
    """Where the sources have only narrower concepts, the label has no code (text only)."""
    assert terminology.label_code("Tachycardia") is None  # sinus tachycardia etc. are narrower
    assert terminology.label_code("Bradycardia").code == "426627000"  # not sinus bradycardia, 426177001
    assert terminology.label_code("Infarction").code == "164865005"  # no age, no site
    assert terminology.label_code("Supraventricular tachycardia with aberrancy") is None


def test_a_finding_the_model_gave_is_coded_as_its_label() -> None:
    for label in LABELS:
        for source in ("model", "model+heart_rate"):
            assert terminology.finding_code(label, source) == terminology.label_code(label)
            assert terminology.finding_terminology(label, source).text == label


def test_a_rate_finding_is_coded_no_more_specifically_than_the_rate_says() -> None:
    """A rate below 60 bpm is a bradycardia, not a sinus bradycardia; a rate above 100 bpm has no concept."""
    brady = terminology.finding_code("Bradycardia", "heart_rate")
    assert brady is not None and brady.code == "426627000"
    assert challenge_concepts()[brady.code] == "bradycardia"
    assert terminology.finding_code("Tachycardia", "heart_rate") is None
    assert terminology.finding_terminology("Tachycardia", "heart_rate").note  # text only says why
    assert terminology.finding_terminology("Tachycardia", "heart_rate").text == "Tachycardia (measured heart rate)"
    with pytest.raises(KeyError):
        terminology.finding_code("Atrial fibrillation", "heart_rate")  # the rate alone never gives it


@pytest.mark.parametrize(("bpm", "added"), [(130.0, "Tachycardia"), (45.0, "Bradycardia")])
def test_every_finding_the_interpreter_makes_has_a_row(bpm: float, added: str) -> None:
    """The interpreter's real rules: the rate-only finding (H3, H6) and every model finding are in FINDINGS."""
    from interpreter.findings import interpret

    probabilities = {label: 0.9 if label in ("Sinus rhythm", "Infarction") else 0.05 for label in LABELS}
    heart_rate = {"heart_rate_bpm": bpm, "quality": "good", "irregular": False, "rr_cv": 0.01}
    findings = interpret(probabilities, heart_rate).reported_findings()
    assert {(f.label, f.source) for f in findings} == {
        ("Sinus rhythm", "model"), ("Infarction", "model"), (added, "heart_rate")
    }  # fmt: skip
    for finding in findings:
        assert (finding.label, finding.source) in terminology.FINDINGS

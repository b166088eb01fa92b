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


def all_concepts() -> set[terminology.Concept]:
    rows = terminology.TERMINOLOGY.values()
    found = {concept for row in rows for concept in row.implied_by} | {row.code for row in rows if row.code}
    return found | {concept for row in rows for group in row.implied_by_all_of for concept in group}


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


def test_no_label_is_coded_more_specifically_than_it_means() -> None:
    """Where the sources have only narrower concepts, the label has no code (text only)."""
    assert terminology.label_code("Tachycardia") is None  # sinus tachycardia etc. are narrower
    assert terminology.label_code("Bradycardia").code == "426627000"  # not sinus bradycardia, 426177001
    assert terminology.label_code("Infarction").code == "164865005"  # no age, no site
    assert terminology.label_code("Supraventricular tachycardia with aberrancy") is None

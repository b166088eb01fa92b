"""What each of ECG-FM's 17 labels means in SNOMED CT: the one terminology table of the product.

Each label has a row of :data:`TERMINOLOGY`:

* ``code``: the SNOMED CT concept that codes the label in results for other systems (FHIR ``code.coding``, HL7 v2
  OBX-3), chosen so that it is **not more specific than the label**; ``None`` where no such concept is in the
  sources below (the label then travels as text only, never under a narrower code);
* ``implied_by``: every code whose presence in a record's diagnoses makes the label positive when a site's own
  labels are read (``ecgfm evaluate``): the label's own concept and the narrower ones it entails;
* ``note``: why, where the label and the concept are not one-to-one.

Sources, each code checked against them (``tests/test_terminology.py`` reads the files):

* the PhysioNet/CinC Challenge 2021 mapping of its 88,000 labelled ECGs to SNOMED CT
  (physionetchallenges/evaluation-2021, ``dx_mapping_scored.csv`` and ``dx_mapping_unscored.csv``; a copy in
  ``../shared/data/physionetchallenges_evaluation-2021/``): the concepts, their names, and the pairs the challenge
  scores as one diagnosis (complete and plain RBBB, complete and plain LBBB, PVC and ventricular premature beats);
* SNOMED CT's own hierarchy for "narrower than": a child concept entails its parent (sinus bradycardia is a
  bradycardia, paroxysmal atrial fibrillation is an atrial fibrillation, Mobitz II is an AV block);
* the labels' meaning: bowang-lab/ECG-FM ``data/mimic_iv_ecg/labels/label_def.csv`` (:mod:`ecgfm.labels`).

The interpreter's findings (:mod:`interpreter.findings`: one per label, from the model, the measured heart rate or
both) have rows of :data:`FINDINGS` (:func:`finding_code`): a finding the model gave (alone or confirmed by the rate)
is its label's finding and reuses the label's concept; a finding the measured rate alone gave (rules H3, H6) means
only "the rate is above 100 / below 60 bpm" and gets the concept that means exactly that, or text only.

Heart rate is LOINC 8867-4 and the ECG study LOINC 11524-6 (:data:`HEART_RATE_LOINC`, :data:`ECG_STUDY_LOINC`); an
interpreter finding is an "EKG impression", LOINC 8601-7 (:data:`EKG_IMPRESSION_LOINC`), whose value is the finding's
concept, as in US Core's "EKG impression" example Observation (hl7.org/fhir/us/core, Observation-ekg-impression).
"""

from __future__ import annotations

from dataclasses import dataclass

from ecgfm.labels import LABELS

SNOMED_SYSTEM = "http://snomed.info/sct"
LOINC_SYSTEM = "http://loinc.org"
HEART_RATE_LOINC = ("8867-4", "Heart rate")
ECG_STUDY_LOINC = ("11524-6", "EKG study")
EKG_IMPRESSION_LOINC = ("8601-7", "EKG impression")
CHALLENGE_SOURCE = "PhysioNet/CinC Challenge 2021 dx_mapping_scored.csv / dx_mapping_unscored.csv"


@dataclass(frozen=True)
class Concept:
    """A SNOMED CT concept as the challenge's mapping names it."""

    code: str
    term: str


@dataclass(frozen=True)
class LabelTerminology:
    """One ECG-FM label in SNOMED CT (see the module's docstring)."""

    label: str
    code: Concept | None
    implied_by: tuple[Concept, ...]
    note: str = ""
    # Diagnoses that make the label positive only together (each inner tuple: all of its codes present).
    implied_by_all_of: tuple[tuple[Concept, ...], ...] = ()


# The challenge's concepts used below, by its own names (dx_mapping_*.csv: Dx, SNOMEDCTCode).
AF = Concept("164889003", "atrial fibrillation")
AFL = Concept("164890007", "atrial flutter")
AFAFL = Concept("195080001", "atrial fibrillation and flutter")
CAF = Concept("426749004", "chronic atrial fibrillation")
PAF = Concept("282825002", "paroxysmal atrial fibrillation")
RAF = Concept("314208002", "rapid atrial fibrillation")
NSR = Concept("426783006", "sinus rhythm")
SB = Concept("426177001", "sinus bradycardia")
STACH = Concept("427084000", "sinus tachycardia")
SA = Concept("427393009", "sinus arrhythmia")
PVC = Concept("427172004", "premature ventricular contractions")
VPB = Concept("17338001", "ventricular premature beats")
VBIG = Concept("11157007", "ventricular bigeminy")
VTRIG = Concept("251180001", "ventricular trigeminy")
VPVC = Concept("251182009", "paired ventricular premature complexes")
SVT = Concept("426761007", "supraventricular tachycardia")
PSVT = Concept("67198005", "paroxysmal supraventricular tachycardia")
ATACH = Concept("713422000", "atrial tachycardia")
JTACH = Concept("426648003", "junctional tachycardia")
AVNRT = Concept("251166008", "atrioventricular node reentrant tachycardia")
AVRT = Concept("233897008", "atrioventricular reentrant tachycardia")
VTACH = Concept("164895002", "ventricular tachycardia")
PVT = Concept("425856008", "paroxysmal ventricular tachycardia")
BRADY = Concept("426627000", "bradycardia")
VPEX = Concept("195060002", "ventricular pre excitation")
WPW = Concept("74390002", "wolff parkinson white pattern")
AVB = Concept("233917008", "av block")
IAVB = Concept("270492004", "1st degree av block")
IIAVB = Concept("195042002", "2nd degree av block")
MOBITZ_I = Concept("54016002", "mobitz type i wenckebach atrioventricular block")
MOBITZ_II = Concept("426183003", "mobitz type II atrioventricular block")
CHB = Concept("27885002", "complete heart block")
CIAHB = Concept("204384007", "congenital incomplete atrioventricular heart block")
RBBB = Concept("59118001", "right bundle branch block")
CRBBB = Concept("713427006", "complete right bundle branch block")
LBBB = Concept("164909002", "left bundle branch block")
CLBBB = Concept("733534002", "complete left bundle branch block")
LAFB = Concept("445118002", "left anterior fascicular block")
LPFB = Concept("445211001", "left posterior fascicular block")
MI = Concept("164865005", "myocardial infarction")
AMI = Concept("57054005", "acute myocardial infarction")
ANMI = Concept("54329005", "anterior myocardial infarction")
OLDMI = Concept("164867002", "old myocardial infarction")
PACED = Concept("10370003", "pacing rhythm")
APACED = Concept("251268003", "atrial pacing pattern")
VPACED = Concept("251266004", "ventricular pacing pattern")

TERMINOLOGY: dict[str, LabelTerminology] = {
    row.label: row
    for row in (
        LabelTerminology(
            "Poor data quality",
            None,
            (),
            "no concept for a recording's quality in the sources; text only, and no site label implies it",
        ),
        LabelTerminology(
            "Sinus rhythm",
            NSR,
            (NSR, SB, STACH, SA),
            "coded as the challenge's 'sinus rhythm' (abbreviated NSR there); sinus bradycardia, sinus tachycardia and "
            "sinus arrhythmia are sinus rhythms, so they imply the label",
        ),
        LabelTerminology(
            "Premature ventricular contraction",
            PVC,
            (PVC, VPB, VBIG, VTRIG, VPVC),
            "the challenge scores 427172004 and 17338001 as one diagnosis; bigeminy, trigeminy and pairs are made of "
            "premature ventricular complexes",
        ),
        LabelTerminology(
            "Tachycardia",
            None,
            (STACH, SVT, PSVT, ATACH, JTACH, AVNRT, AVRT, VTACH, PVT),
            "the label is any tachycardia; the sources have only narrower tachycardias, so it is text only in results; "
            "each of them implies it",
        ),
        LabelTerminology(
            "Ventricular tachycardia",
            VTACH,
            (VTACH, PVT),
            "paroxysmal ventricular tachycardia is a ventricular tachycardia",
        ),
        LabelTerminology(
            "Supraventricular tachycardia with aberrancy",
            None,
            (),
            "no concept for aberrant conduction in the sources; 'supraventricular tachycardia' (426761007) is broader, "
            "so text only, and no site label implies it",
        ),
        LabelTerminology(
            "Atrial fibrillation",
            AF,
            (AF, AFAFL, CAF, PAF, RAF),
            "chronic, paroxysmal and rapid atrial fibrillation are atrial fibrillation; 'atrial fibrillation and "
            "flutter' implies both labels",
        ),
        LabelTerminology("Atrial flutter", AFL, (AFL, AFAFL), "'atrial fibrillation and flutter' implies both labels"),
        LabelTerminology(
            "Bradycardia",
            BRADY,
            (BRADY, SB),
            "coded as 'bradycardia', not 'sinus bradycardia' (narrower); sinus bradycardia implies it",
        ),
        LabelTerminology(
            "Accessory pathway conduction",
            VPEX,
            (VPEX, WPW),
            "ventricular pre-excitation is conduction over an accessory pathway; the Wolff-Parkinson-White pattern is "
            "a pre-excitation (narrower)",
        ),
        LabelTerminology(
            "Atrioventricular block",
            AVB,
            (AVB, IAVB, IIAVB, MOBITZ_I, MOBITZ_II, CHB, CIAHB),
            "every degree and type of AV block implies it; a prolonged PR interval (164947007) is not mapped (the "
            "challenge scores it apart from 1st degree AV block)",
        ),
        LabelTerminology("1st degree atrioventricular block", IAVB, (IAVB,)),
        LabelTerminology(
            "Bifascicular block",
            None,
            (),
            "no single concept in the sources; text only; a record is positive when it has right bundle branch block "
            "together with a left anterior or left posterior fascicular block",
            implied_by_all_of=((RBBB, LAFB), (RBBB, LPFB), (CRBBB, LAFB), (CRBBB, LPFB)),
        ),
        LabelTerminology(
            "Right bundle branch block",
            RBBB,
            (RBBB, CRBBB),
            "the challenge scores 713427006 and 59118001 as one diagnosis; incomplete RBBB (713426002) is not mapped",
        ),
        LabelTerminology(
            "Left bundle branch block",
            LBBB,
            (LBBB, CLBBB),
            "the challenge scores 733534002 and 164909002 as one diagnosis; incomplete LBBB (251120003) is not mapped",
        ),
        LabelTerminology(
            "Infarction",
            MI,
            (MI, AMI, ANMI, OLDMI),
            "the label has no age or site: coded as 'myocardial infarction', which has neither; acute, anterior and "
            "old infarction imply it",
        ),
        LabelTerminology(
            "Electronic pacemaker",
            PACED,
            (PACED, APACED, VPACED),
            "coded as the challenge's 'pacing rhythm'; atrial and ventricular pacing patterns imply it",
        ),
    )
}
if tuple(TERMINOLOGY) != LABELS:  # the table follows LABELS, one row each, in order
    raise AssertionError("ecgfm.terminology.TERMINOLOGY must have one row per label, in LABELS order")


def label_code(label: str) -> Concept | None:
    """The SNOMED CT concept that codes ``label`` in results (``None``: text only)."""
    return TERMINOLOGY[label].code


def labels_implied_by(codes: set[str]) -> set[str]:
    """The labels made positive by a record's SNOMED CT diagnosis codes."""
    positive = set()
    for row in TERMINOLOGY.values():
        if any(concept.code in codes for concept in row.implied_by) or any(
            all(concept.code in codes for concept in group) for group in row.implied_by_all_of
        ):
            positive.add(row.label)
    return positive


def mapped_codes() -> set[str]:
    """Every code that implies some label, alone or with others; any other code maps to no label."""
    codes = {concept.code for row in TERMINOLOGY.values() for concept in row.implied_by}
    return codes | {
        concept.code for row in TERMINOLOGY.values() for group in row.implied_by_all_of for concept in group
    }


# ---- the interpreter's findings ----------------------------------------------------------------------------------

FINDING_SOURCES = ("model", "model+heart_rate", "heart_rate")  # interpreter.findings.Finding.source


@dataclass(frozen=True)
class FindingTerminology:
    """One kind of interpreter finding in SNOMED CT: ``label`` found from ``source``; ``code`` as for a label."""

    label: str
    source: str
    code: Concept | None
    note: str = ""

    @property
    def text(self) -> str:
        """What the finding says, for ``code.text`` / CWE-9: the label, and "(measured heart rate)" when the rate alone
        gave it."""
        return f"{self.label} (measured heart rate)" if self.source == "heart_rate" else self.label


def _label_finding(label: str, source: str) -> FindingTerminology:
    return FindingTerminology(label, source, TERMINOLOGY[label].code, f"the label's finding: {label}'s concept")


# The findings the interpreter adds from the measured heart rate alone (rules H3, H6; docs/clinical_methodology.md).
RATE_FINDINGS = (
    FindingTerminology(
        "Tachycardia",
        "heart_rate",
        None,
        "a measured rate above 100 bpm says nothing of where the rhythm starts; the sources have only narrower "
        "tachycardias (sinus tachycardia 427084000, supraventricular 426761007, ventricular 164895002, ...), so text "
        "only",
    ),
    FindingTerminology(
        "Bradycardia",
        "heart_rate",
        BRADY,
        "'bradycardia' (426627000) is a slow heart rate whatever the rhythm, what a measured rate below 60 bpm "
        "says; not 'sinus bradycardia' (426177001, narrower)",
    ),
)
FINDINGS: dict[tuple[str, str], FindingTerminology] = {
    **{(label, source): _label_finding(label, source) for label in LABELS for source in ("model", "model+heart_rate")},
    **{(row.label, row.source): row for row in RATE_FINDINGS},
}


# A reported finding's status as an interpretation (FHIR v3-ObservationInterpretation, HL7 v2 table 0078, OBX-8):
# present is positive; possible (the borderline zone) and discordant (model and measured rate disagree) are neither.
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FINDING_INTERPRETATION: dict[str, tuple[str, str]] = {
    "present": ("POS", "Positive"),
    "possible": ("IND", "Indeterminate"),
    "discordant": ("IND", "Indeterminate"),
}


def finding_terminology(label: str, source: str) -> FindingTerminology:
    """The row of an interpreter finding (its ``label`` and ``source``); ``KeyError`` for one the interpreter never
    makes (only Tachycardia and Bradycardia come from the heart rate alone)."""
    return FINDINGS[label, source]


def finding_code(label: str, source: str) -> Concept | None:
    """The SNOMED CT concept that codes an interpreter finding (``None``: text only)."""
    return finding_terminology(label, source).code

"""FHIR R4 Bundles as patient input: validation, encounter order, coding systems, profile."""

from __future__ import annotations

import copy

import pytest
from helpers import coded, entry, make_bundle

import leader
from leader.errors import LeaderError
from leader.fhir import ICD9, bundle_to_patient


def test_bundle_to_patient_orders_and_maps():
    patient, warnings = bundle_to_patient(make_bundle())
    old, new = patient.visits
    assert old.diagnoses == ["icd9:402."] and old.drugs == ["atc:A00A", "ndc:00002202402"]
    assert new.diagnoses == ["icd9:401", "icd10:I10"] and new.procedures == ["icd10:0DTJ4ZZ"]
    assert patient.profile == {
        "gender": "F",
        "age": 69,  # at the last encounter, before the birthday
        "marital_status": "MARRIED",
        "insurance": "Medicare",
    }
    assert patient.id == "p1"
    text = "\n".join(warnings)
    assert "snomed" in text and "Encounter/gone" in text and "Observation" in text


def test_fhir_recommendation_through_the_bundle(tiny_data, bundles):
    rec = leader.load(bundles["repeat-last"])
    out = rec.recommend(make_bundle())
    assert "A00A" in out["recommended"]  # repeated from the earlier encounter
    assert out["patient_id"] == "p1"
    assert any("icd10:I10" in w for w in out["warnings"])  # not in this ICD-9 vocabulary


def test_bundle_without_encounters_is_one_visit():
    b = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [entry(coded("Condition", ICD9, "400", None))],
    }
    patient, warnings = bundle_to_patient(b)
    assert len(patient.visits) == 1 and patient.visits[0].diagnoses == ["icd9:400"]
    assert any("no Patient" in w for w in warnings)


def broken(edit) -> dict:
    b = copy.deepcopy(make_bundle())
    edit(b)
    return b


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        ({"resourceType": "Patient"}, "expected a FHIR 'Bundle'"),
        ({"resourceType": "Bundle"}, "invalid FHIR Bundle: bundle.type"),
        (broken(lambda b: b["entry"][0]["resource"].update(birthDate="June")), "invalid FHIR"),
        (broken(lambda b: b["entry"][1]["resource"].pop("status")), "invalid FHIR"),
        (broken(lambda b: b["entry"][3]["resource"].update(code="I10")), "invalid FHIR"),
        (broken(lambda b: b["entry"][1]["resource"].pop("period")), "period.start is needed"),
        (
            broken(lambda b: b["entry"].append(b["entry"][0])),
            "expected one Patient resource",
        ),
    ],
)
def test_invalid_fhir_is_a_leader_error(bundle, expected):
    with pytest.raises(LeaderError, match=expected):
        bundle_to_patient(bundle)

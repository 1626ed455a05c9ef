"""FHIR R4 Bundles as patient input: validation, encounter order, coding systems, profile."""

from __future__ import annotations

import copy

import pytest
import recommend_fixtures

import leader
from leader.errors import LeaderError
from leader.fhir import ATC, ICD9, ICD10CM, ICD10PCS, NDC, bundle_to_patient

bundles = recommend_fixtures.bundles  # the shared session fixture


def entry(resource: dict, url: str | None = None) -> dict:
    return {"fullUrl": url, "resource": resource} if url else {"resource": resource}


def coded(kind: str, system: str, code: str, encounter: str | None, **extra) -> dict:
    res: dict = {"resourceType": kind, "subject": {"reference": "Patient/p1"}, **extra}
    concept = {"coding": [{"system": system, "code": code}]}
    if kind == "MedicationRequest":
        res.update(status="completed", intent="order", medicationCodeableConcept=concept)
    else:
        res["code"] = concept
    if kind == "Procedure":
        res["status"] = "completed"
    if encounter:
        res["encounter"] = {"reference": encounter}
    return res


def encounter(eid: str, start: str | None) -> dict:
    res = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    }
    if start:
        res["period"] = {"start": start}
    return res


def make_bundle() -> dict:
    """Two encounters listed newest first; the older one referenced through its fullUrl."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            entry(
                {
                    "resourceType": "Patient",
                    "id": "p1",
                    "gender": "female",
                    "birthDate": "1950-06-15",
                    "maritalStatus": {"coding": [{"code": "M"}]},
                    "extension": [
                        {
                            "url": "https://leader.invalid/fhir/profile/insurance",
                            "valueString": "Medicare",
                        }
                    ],
                }
            ),
            entry(encounter("new", "2020-03-01T10:00:00Z")),
            entry(encounter("old", "2019-01-01T10:00:00Z"), "urn:uuid:old-enc"),
            entry(coded("Condition", ICD9, "401", "Encounter/new")),
            entry(coded("Condition", ICD10CM, "I10", "Encounter/new")),
            entry(coded("Procedure", ICD10PCS, "0DTJ4ZZ", "Encounter/new")),
            entry(coded("Condition", ICD9, "402.", "urn:uuid:old-enc")),
            entry(coded("MedicationRequest", ATC, "A00A", "urn:uuid:old-enc")),
            entry(coded("MedicationRequest", NDC, "00002202402", "urn:uuid:old-enc")),
            entry(coded("Condition", "http://snomed.info/sct", "38341003", "Encounter/new")),
            entry(coded("Condition", ICD9, "403", "Encounter/gone")),
            entry({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        ],
    }


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

"""FHIR R4 out: a recommendation as draft ``MedicationRequest`` resources and ``DetectedIssue``
resources for interacting pairs, in one ``Bundle`` (type ``collection``).

What an EHR can file or show as is: each recommended ATC3 class is a MedicationRequest with
status ``draft`` and intent ``proposal`` (a suggestion, never an order), coded with the WHO ATC
system; its probability (and, when asked, its reasons) is in ``note``. Each interacting pair
in the recommended set is a DetectedIssue with code ``DRG`` (drug interaction, HL7 v3 ActCode)
and severity ``high`` (the DDI list holds pairs flagged as severe), implicating both drafts.
Every resource is validated with ``fhir.resources`` (R4B models, identical to R4 for these
resources) before it leaves, and resource ids are UUIDv5 of (model id, patient, code), so the
same recommendation always gives the same Bundle.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from leader.errors import LeaderError
from leader.fhir import ATC

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
NAMESPACE = uuid.UUID("6f1c8d52-6a8e-4c47-9a51-7d1f0e6b2a10")  # leader's own UUIDv5 namespace


def _validated(resource: dict) -> dict:
    """Check ``resource`` with its fhir.resources model; a failure is a bug in leader."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception as e:  # pydantic ValidationError or fhir.resources' own errors
        raise LeaderError(f"{resource['resourceType']}: not valid FHIR R4 ({str(e)[:300]})") from e
    return resource


def subject(patient_id: str) -> dict:
    """A Patient reference when the id is a valid FHIR id, else the id as display text."""
    if FHIR_ID.match(patient_id):
        return {"reference": f"Patient/{patient_id}"}
    return {"display": patient_id[:128]}


def resource_id(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


def medication_request(
    code: str,
    name: str,
    patient_id: str,
    probability: float,
    model_id: str,
    reasons: list[dict] | None = None,
) -> dict:
    """A draft proposal of one ATC3 class for one patient (validated)."""
    text = f"Suggested by leader model {model_id}: probability {probability:.2f}."
    if reasons:
        shown = (f"{r['title']} ({r['contribution']:+.3f})" for r in reasons)
        text += " Reasons: " + "; ".join(shown)
    return _validated(
        {
            "resourceType": "MedicationRequest",
            "id": resource_id(model_id, patient_id, code),
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": {
                "coding": [{"system": ATC, "code": code, "display": name}],
                "text": name,
            },
            "subject": subject(patient_id),
            "note": [{"text": text}],
        }
    )


def detected_issue(
    pair: list[str], names: list[str], patient_id: str, implicated: list[str], model_id: str
) -> dict:
    """A drug-drug interaction between two classes (validated); ``implicated``: references."""
    return _validated(
        {
            "resourceType": "DetectedIssue",
            "id": resource_id(model_id, patient_id, *pair),
            "status": "preliminary",
            "code": {
                "coding": [{"system": ACT_CODE, "code": "DRG", "display": "Drug Interaction Alert"}]
            },
            "severity": "high",
            "patient": subject(patient_id),
            "implicated": [{"reference": r} for r in implicated],
            "detail": f"{names[0]} ({pair[0]}) interacts with {names[1]} ({pair[1]}).",
        }
    )


def recommendation_bundle(result: dict) -> dict:
    """One output of :mod:`leader.recommend` → a validated FHIR R4 Bundle."""
    pid, model_id = str(result["patient_id"]), result["model"]["id"]
    probs = {d["code"]: d for d in result["ranked"]}
    reasons = result.get("explanation", {}).get("drugs", {})
    entries, urls = [], {}
    for code in result["recommended"]:
        d = probs[code]
        res = medication_request(
            code, d["name"], pid, d["probability"], model_id, reasons.get(code)
        )
        urls[code] = f"urn:uuid:{res['id']}"
        entries.append({"fullUrl": urls[code], "resource": res})
    for w in result["ddi_warnings"]:
        res = detected_issue(w["drugs"], w["names"], pid, [urls[c] for c in w["drugs"]], model_id)
        entries.append({"fullUrl": f"urn:uuid:{res['id']}", "resource": res})
    return _validated(
        {
            "resourceType": "Bundle",
            "id": resource_id(model_id, pid, "bundle", *result["recommended"]),
            "type": "collection",
            "entry": entries,
        }
    )


def as_fhir(results: list[dict] | dict) -> Any:
    """Bundles for one result or a list of them."""
    if isinstance(results, dict):
        return recommendation_bundle(results)
    return [recommendation_bundle(r) for r in results]

"""CDS Hooks 2.0 services: how an EHR (Epic, Oracle Health, the SMART sandbox) calls leader.

* ``GET /cds-services``: discovery of two services with their prefetch templates.
* ``POST /cds-services/leader-patient-view`` (hook ``patient-view``): a suggestion card listing
  the recommended classes with probabilities and reasons, each suggestion a ``create`` action of
  a draft MedicationRequest (:mod:`leader.fhir_out`); a ``warning`` card per interacting pair.
* ``POST /cds-services/leader-order-select`` (hook ``order-select``): checks the clinician's
  draft medication orders: ``warning`` cards for interacting pairs among them and with the
  current medications, ``info`` cards for drafted classes the model finds unlikely.
* ``POST /cds-services/{id}/feedback``: accepted and logged by count only.

The patient comes from ``prefetch`` (FHIR R4 resources, read by :mod:`leader.fhir`): the
Patient, the encounter's Conditions and Procedures (the visit to recommend for), and the
MedicationRequests / MedicationStatements (the current medications, read as the drugs of an
earlier visit). leader never queries a FHIR server, so a missing prefetch key is a 412, which
is what the specification advises when a service cannot get the data it needs.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from leader.errors import LeaderError
from leader.fhir import SKIPPED_STATUS, SYSTEMS, bundle_to_patient, parse_bundle
from leader.fhir_out import NAMESPACE, recommendation_bundle
from leader.patient import PatientReader, drug_code
from leader.serve.schemas import ErrorBody, ServeSettings

log = logging.getLogger("leader.serve")
SUMMARY_MAX = 140  # the specification wants summaries under 140 characters
UNLIKELY_BELOW = 0.05  # order-select: a drafted class under this probability gets an info card
MAX_WARNINGS = 10  # interaction cards per answer; the rest are counted in the last one
PATIENT = "{{context.patientId}}"
PREFETCH = {
    "patient": f"Patient/{PATIENT}",
    "conditions": f"Condition?patient={PATIENT}&encounter={{{{context.encounterId}}}}",
    "procedures": f"Procedure?patient={PATIENT}&encounter={{{{context.encounterId}}}}",
    "medications": f"MedicationRequest?patient={PATIENT}&status=active",
    "statements": f"MedicationStatement?patient={PATIENT}&status=active",
}
REQUIRED = ("patient", "conditions", "procedures", "medications")  # statements: optional
SERVICES = {
    "leader-patient-view": {
        "hook": "patient-view",
        "title": "leader medication classes",
        "description": "Drug classes (ATC level 3) a distilled model suggests for this "
        "encounter, with probabilities, reasons and interaction warnings.",
    },
    "leader-order-select": {
        "hook": "order-select",
        "title": "leader order check",
        "description": "Checks draft medication orders: interacting pairs among them and with "
        "current medications, and classes the model finds unlikely for this patient.",
    },
}
HOOKS = {s["hook"] for s in SERVICES.values()}
OUTCOMES = ("accepted", "overridden")


def discovery() -> dict:
    return {
        "services": [
            {"id": sid, **meta, "prefetch": PREFETCH, "usageRequirements": _usage()}
            for sid, meta in SERVICES.items()
        ]
    }


def _usage() -> str:
    keys = ", ".join(REQUIRED)
    return f"Send prefetch {keys} (statements optional); leader does not query FHIR servers."


def _clip(text: str) -> str:
    return text if len(text) < SUMMARY_MAX else text[: SUMMARY_MAX - 2] + "…"


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise LeaderError(f"{where}: expected a JSON object")
    return value


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise LeaderError(f"{where}.{key}: expected a non-empty string (at most 256 characters)")
    return value


def check_request(service_id: str, body: Any) -> tuple[dict, dict, str]:
    """The request's context, prefetch and hookInstance; 404 for an unknown service or hook,
    422 for a malformed request, 412 for missing prefetch."""
    if service_id not in SERVICES:
        raise HTTPException(404, f"no CDS service {service_id[:60]!r}; see GET /cds-services")
    body = _object(body, "request")
    hook = _text(body, "hook", "request")
    if hook != SERVICES[service_id]["hook"]:
        known = "this service" if hook in HOOKS else "leader"
        raise HTTPException(404, f"hook {hook[:40]!r} is not served by {known}")
    instance = _text(body, "hookInstance", "request")
    context = _object(body.get("context"), "request.context")
    _text(context, "patientId", "request.context")
    prefetch = body.get("prefetch") or {}
    _object(prefetch, "request.prefetch")
    missing = [k for k in REQUIRED if prefetch.get(k) is None]
    if missing:
        raise HTTPException(
            412,
            f"prefetch: missing {', '.join(missing)}; leader never queries a FHIR server, so "
            "the CDS client must send them (see the prefetch templates at GET /cds-services)",
        )
    return context, prefetch, instance


def _entries(value: Any, key: str) -> list[dict]:
    """The resources of a prefetch value: a searchset Bundle or a single resource."""
    value = _object(value, f"prefetch.{key}")
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry") or []
        if not isinstance(entries, list):
            raise LeaderError(f"prefetch.{key}.entry: expected a list of entries")
        return [
            e["resource"]
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    return [value]


def _medication_keys(resources: list[dict], where: str, warnings: list[str]) -> list[str]:
    """Drug keys (``atc:``/``ndc:``) of MedicationRequests / MedicationStatements / drafts."""
    try:  # validated first, so the reading below meets only well-formed resources
        parse_bundle({"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": r} for r in resources]})
    except LeaderError as e:
        raise LeaderError(f"{where}: {e}") from None
    meds = {
        f"Medication/{r.get('id')}": r for r in resources if r.get("resourceType") == "Medication"
    }
    keys = []
    for r in resources:
        if r.get("resourceType") not in ("MedicationRequest", "MedicationStatement"):
            continue
        if r.get("status") in SKIPPED_STATUS:
            continue
        concept = r.get("medicationCodeableConcept")
        ref = (r.get("medicationReference") or {}).get("reference")
        if concept is None and ref in meds:
            concept = meds[ref].get("code")
        codings = (concept or {}).get("coding") or []
        for c in codings:
            prefix = SYSTEMS["MedicationRequest"].get(str(c.get("system")))
            if prefix and c.get("code"):
                keys.append(prefix + str(c["code"]))
                break
        else:
            warnings.append(f"{where}: {r.get('resourceType')} {str(r.get('id'))[:40]} has no "
                            "ATC or NDC coding; ignored")
    return list(dict.fromkeys(keys))


def patient_from_prefetch(
    reader: PatientReader, context: dict, prefetch: dict
) -> tuple[Any, list[str], list[str]]:
    """(sample, warnings, current medication keys) from the prefetch resources."""
    patient = _object(prefetch["patient"], "prefetch.patient")
    if patient.get("resourceType") != "Patient":
        raise LeaderError("prefetch.patient: expected a FHIR Patient resource")
    encounter_id = context.get("encounterId")
    clinical = [r for k in ("conditions", "procedures") for r in _entries(prefetch[k], k)]
    if not isinstance(encounter_id, str):  # no encounter: the patient's list is this visit
        encounter_id = "current"
        clinical = [{k: v for k, v in r.items() if k != "encounter"} for r in clinical]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    encounter = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "period": {"start": now},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in [patient, encounter, *clinical]],
    }
    visit, warnings = bundle_to_patient(bundle, reader.limits)
    med_resources = [
        r for k in ("medications", "statements") if prefetch.get(k) is not None
        for r in _entries(prefetch[k], k)
    ]
    current = _medication_keys(med_resources, "prefetch.medications", warnings)
    record = visit.model_dump(exclude_none=True)
    if current:
        record["visits"].insert(0, {"diagnoses": [], "procedures": [], "drugs": current})
    sample, more = reader.to_sample(record, "patient")
    return sample, warnings + more, current


def _atc3(keys: list[str], reader: PatientReader) -> list[str]:
    index = reader.schema.drugs.index
    return list(dict.fromkeys(a for k in keys if (a := drug_code(k)) in index))


class Cards:
    """Builds the cards of one answer with deterministic uuids (hookInstance + content)."""

    def __init__(self, instance: str, source: dict):
        self.instance, self.source, self.cards = instance, source, []

    def uuid(self, *parts: str) -> str:
        return str(uuid.uuid5(NAMESPACE, "|".join([self.instance, *parts])))

    def add(self, indicator: str, summary: str, detail: str, **more: Any) -> None:
        card = {
            "uuid": self.uuid(indicator, summary),
            "summary": _clip(summary),
            "detail": detail,
            "indicator": indicator,
            "source": self.source,
            **more,
        }
        self.cards.append(card)

    def interactions(self, pairs: list[tuple[str, str]], schema: Any, why: str) -> None:
        for a, b in pairs[:MAX_WARNINGS]:
            ta, tb = schema.drugs.title(a), schema.drugs.title(b)
            self.add("warning", f"Interaction: {ta} ({a}) with {tb} ({b})",
                     f"{ta} (`{a}`) and {tb} (`{b}`) are an interacting pair in the model's "
                     f"drug-drug interaction list ({schema.ddi_source or 'unknown source'}); "
                     f"{why}.")
        if len(pairs) > MAX_WARNINGS:
            self.add("warning", f"{len(pairs) - MAX_WARNINGS} more interacting pairs",
                     "Only the first interactions are shown as cards.")


def _reason_lines(reasons: list[dict], unit: str) -> str:
    if not reasons:
        return "no single input raises it"
    return ", ".join(f"{r['title']} ({r['contribution']:+.3f} {unit})" for r in reasons)


def patient_view_cards(rec: Any, result: dict, cards: Cards, warnings: list[str]) -> None:
    bundle = recommendation_bundle(result)
    drafts = {e["resource"]["medicationCodeableConcept"]["coding"][0]["code"]: e["resource"]
              for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"}
    probs = {d["code"]: d["probability"] for d in result["ranked"]}
    explanation = result.get("explanation", {})
    unit = explanation.get("unit", "")
    if result["recommended"]:
        names = [rec.schema.drugs.title(c) for c in result["recommended"]]
        lines = [
            f"- **{rec.schema.drugs.title(c)}** (`{c}`), probability {probs[c]:.2f}: "
            + _reason_lines(explanation.get("drugs", {}).get(c, []), unit)
            for c in result["recommended"]
        ]
        detail = (
            f"Classes at or above the model's threshold {result['threshold']}, with the inputs "
            f"that raise each most ({explanation.get('method', '')}, in {unit}):\n\n"
            + "\n".join(lines)
            + "\n\nDecision support only: review every class before ordering."
            + ("\n\nNotes: " + "; ".join(warnings[:5]) if warnings else "")
        )
        suggestions = [
            {
                "label": f"Propose {rec.schema.drugs.title(c)} ({c}), p {probs[c]:.2f}",
                "uuid": cards.uuid("suggest", c),
                "actions": [
                    {
                        "type": "create",
                        "description": f"Draft a proposal for {rec.schema.drugs.title(c)} ({c})",
                        "resource": drafts[c],
                    }
                ],
            }
            for c in result["recommended"]
        ]
        cards.add("info", f"{len(names)} drug classes suggested: " + ", ".join(names), detail,
                  suggestions=suggestions, selectionBehavior="any")
    pairs = [tuple(w["drugs"]) for w in result["ddi_warnings"]]
    cards.interactions(pairs, rec.schema, "both are among the suggested classes")


def order_select_cards(
    rec: Any, reader: PatientReader, result: dict, context: dict, current: list[str],
    cards: Cards, warnings: list[str],
) -> None:
    drafts = _object(context.get("draftOrders"), "request.context.draftOrders")
    if drafts.get("resourceType") != "Bundle":
        raise LeaderError("request.context.draftOrders: expected a FHIR Bundle")
    selections = context.get("selections")
    if not isinstance(selections, list) or not all(isinstance(s, str) for s in selections):
        raise LeaderError("request.context.selections: expected a list of resource references")
    ordered = _atc3(_medication_keys(_entries(drafts, "draftOrders"), "draftOrders", warnings),
                    reader)
    on = [c for c in _atc3(current, reader) if c not in ordered]
    ddi, index = rec.schema.ddi_matrix, rec.schema.drugs.index
    pairs = [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]
             if ddi[index[a], index[b]]]
    cards.interactions(pairs, rec.schema, "both are in the draft orders")
    pairs = [(a, b) for a in ordered for b in on if ddi[index[a], index[b]]]
    cards.interactions(
        pairs, rec.schema, "the first is drafted, the second is a current medication"
    )
    probs = {d["code"]: d["probability"] for d in result["ranked"]}
    for c in ordered:
        if probs[c] < UNLIKELY_BELOW:
            title = rec.schema.drugs.title(c)
            cards.add("info", f"Unusual for this patient: {title} ({c}), p {probs[c]:.3f}",
                      f"The model gives {title} (`{c}`) a probability of {probs[c]:.3f} for this "
                      f"encounter (under {UNLIKELY_BELOW}); worth a second look, not an error.")


CDS_ERRORS = {
    400: "Invalid JSON, or a Host header not allowed",
    401: "Missing or wrong bearer token",
    404: "No such CDS service, or a hook it does not serve",
    408: "Body not received in time",
    412: "Prefetch missing (leader never queries a FHIR server)",
    413: "Body over the size limit",
    415: "Not a JSON content type",
    422: "Valid JSON, but not a valid CDS Hooks request",
}


def cds_router(
    rec: Any,
    reader: PatientReader,
    guarded: list,
    settings: ServeSettings,
    read_body: Callable[[Request, int, float], Awaitable[Any]],
) -> APIRouter:
    """The CDS Hooks routes for one loaded model, behind the app's auth dependency (``guarded``)
    and body reader (``read_body``: size limit, content type, JSON), so both stay one."""
    router = APIRouter(dependencies=guarded, tags=["CDS Hooks 2.0"])
    info = rec.info

    def json_response(obj: Any) -> Response:
        return Response(json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(),
                        media_type="application/json")

    def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
        return {c: {"model": ErrorBody, "description": CDS_ERRORS[c]} for c in codes}

    @router.get("/cds-services", summary="CDS Hooks discovery", responses=errors(400, 401, 422))
    def get_discovery() -> Response:
        return json_response(discovery())

    @router.post("/cds-services/{service_id}", summary="Call a CDS Hooks service",
                 responses=errors(400, 401, 404, 408, 412, 413, 415, 422))
    async def call(service_id: str, request: Request) -> Response:
        if service_id not in SERVICES:
            raise HTTPException(404, f"no CDS service {service_id[:60]!r}; see GET /cds-services")
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        context, prefetch, instance = check_request(service_id, body)
        sample, warnings, current = patient_from_prefetch(reader, context, prefetch)
        result = rec.recommend_samples([(sample, warnings)], explain=True)[0]
        source = {
            "label": f"leader {info['id']}",
            "url": str(request.base_url).rstrip("/") + "/v1/model",
            "topic": {"system": "https://leader.invalid/cds", "code": info["name"],
                      "display": f"leader {info['name']} model"},
        }
        cards = Cards(instance, source)
        if SERVICES[service_id]["hook"] == "patient-view":
            patient_view_cards(rec, result, cards, warnings)
        else:
            order_select_cards(rec, reader, result, context, current, cards, warnings)
        return json_response({"cards": cards.cards})

    @router.post("/cds-services/{service_id}/feedback", summary="Feedback on cards",
                 responses=errors(400, 401, 404, 408, 413, 415, 422))
    async def feedback(service_id: str, request: Request) -> Response:
        if service_id not in SERVICES:
            raise HTTPException(404, f"no CDS service {service_id[:60]!r}; see GET /cds-services")
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        body = _object(body, "feedback request")
        items = body.get("feedback")
        if not isinstance(items, list) or not items:
            raise LeaderError("feedback: expected a non-empty list")
        for i, item in enumerate(items):
            _text(_object(item, f"feedback[{i}]"), "card", f"feedback[{i}]")
            if item.get("outcome") not in OUTCOMES:
                raise LeaderError(f"feedback[{i}].outcome: expected one of {', '.join(OUTCOMES)}")
        state = request.app.state  # a count only: feedback may name patients' cards
        state.cds_feedback = getattr(state, "cds_feedback", 0) + len(items)
        log.info("CDS feedback: %d item(s) for %s", len(items), service_id)
        return json_response({})

    return router

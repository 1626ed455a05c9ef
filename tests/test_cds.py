"""CDS Hooks 2.0 services: discovery, patient-view, order-select and feedback, with every
request and answer checked against the 2.0 shapes, every draft against fhir.resources, and
the REST API's bad-input rules (4xx, never 5xx)."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.medicationrequest import MedicationRequest

import leader
from leader.fhir import ATC, ICD9
from leader.serve import ServeSettings, create_app
from leader.serve import cds as cds_module

# The CDS Hooks 2.0 shapes (written from the specification's field tables)
CODING = {"type": "object", "required": ["code"],
          "properties": {"code": {"type": "string"}, "system": {"type": "string"},
                         "display": {"type": "string"}}}
DISCOVERY = {
    "type": "object", "required": ["services"],
    "properties": {"services": {"type": "array", "items": {
        "type": "object", "required": ["hook", "description", "id"],
        "properties": {"hook": {"type": "string"}, "title": {"type": "string"},
                       "description": {"type": "string"}, "id": {"type": "string"},
                       "prefetch": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                       "usageRequirements": {"type": "string"}}}}}}
REQUEST = {
    "type": "object", "required": ["hook", "hookInstance", "context"],
    "properties": {"hook": {"type": "string"}, "hookInstance": {"type": "string"},
                   "fhirServer": {"type": "string"}, "fhirAuthorization": {"type": "object"},
                   "context": {"type": "object", "required": ["userId", "patientId"]},
                   "prefetch": {"type": "object"}}}
ACTION = {"type": "object", "required": ["type", "description"],
          "properties": {"type": {"enum": ["create", "update", "delete"]},
                         "description": {"type": "string"}, "resource": {"type": "object"},
                         "resourceId": {"type": "array"}}}
SUGGESTION = {"type": "object", "required": ["label"],
              "properties": {"label": {"type": "string"}, "uuid": {"type": "string"},
                             "isRecommended": {"type": "boolean"},
                             "actions": {"type": "array", "items": ACTION}}}
CARD = {
    "type": "object", "required": ["summary", "indicator", "source"],
    "properties": {
        "uuid": {"type": "string"}, "summary": {"type": "string", "maxLength": 139},
        "detail": {"type": "string"}, "indicator": {"enum": ["info", "warning", "critical"]},
        "source": {"type": "object", "required": ["label"],
                   "properties": {"label": {"type": "string"}, "url": {"type": "string"},
                                  "icon": {"type": "string"}, "topic": CODING}},
        "suggestions": {"type": "array", "items": SUGGESTION},
        "selectionBehavior": {"enum": ["at-most-one", "any"]},
        "links": {"type": "array"}}}
RESPONSE = {"type": "object", "required": ["cards"],
            "properties": {"cards": {"type": "array", "items": CARD}}}


def coded(kind: str, code: str, system: str, encounter: str | None = "Encounter/enc-7") -> dict:
    res = {"resourceType": kind, "id": f"{kind[:3].lower()}-{code}", "subject": {"reference":
           "Patient/pat-1"}, "code": {"coding": [{"system": system, "code": code}]}}
    if kind == "Condition":
        res["clinicalStatus"] = {"coding": [{"code": "active"}]}
    elif kind == "Procedure":
        res["status"] = "completed"
    if encounter:
        res["encounter"] = {"reference": encounter}
    return res


def medication(kind: str, atc: str, status: str = "active") -> dict:
    res = {"resourceType": kind, "id": f"med-{atc}", "status": status,
           "subject": {"reference": "Patient/pat-1"},
           "medicationCodeableConcept": {"coding": [{"system": ATC, "code": atc}]}}
    if kind == "MedicationRequest":
        res["intent"] = "order"
    return res


def searchset(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                       "resource": r} for r in resources]}


def prefetch(tiny_data, meds: list[str]) -> dict:
    """What an EHR sends: the Patient, this encounter's Conditions and Procedures (one from
    another encounter, which must be left out), the active medications."""
    dx = [c.split(":")[1] for c in tiny_data.vocab["diagnoses"].codes[:3]]
    px = tiny_data.vocab["procedures"].codes[0].split(":")[1]
    return {
        "patient": {"resourceType": "Patient", "id": "pat-1", "gender": "female",
                    "birthDate": "1948-02-03"},
        "conditions": searchset([coded("Condition", dx[0], ICD9), coded("Condition", dx[1], ICD9),
                                 coded("Condition", dx[2], ICD9, "Encounter/older")]),
        "procedures": searchset([coded("Procedure", px, ICD9)]),
        "medications": searchset([medication("MedicationRequest", m) for m in meds]),
        "statements": searchset([]),
    }


def hook_request(hook: str, tiny_data, meds: list[str], **context) -> dict:
    return {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": hook,
            "context": {"userId": "Practitioner/example", "patientId": "pat-1",
                        "encounterId": "enc-7", **context},
            "prefetch": prefetch(tiny_data, meds)}


@pytest.fixture(scope="module")
def app(bundles):
    return create_app(leader.load(bundles["ddi"]), ServeSettings())


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url="http://127.0.0.1")


def test_discovery(client):
    r = client.get("/cds-services")
    assert r.status_code == 200
    body = r.json()
    jsonschema.validate(body, DISCOVERY)
    assert {s["hook"] for s in body["services"]} == {"patient-view", "order-select"}
    for s in body["services"]:
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["prefetch"]["conditions"].startswith("Condition?patient={{context.patientId}}")
        assert {"procedures", "medications", "statements"} <= set(s["prefetch"])


def test_patient_view_end_to_end(client, tiny_data):
    a, b = tiny_data.ddi_pairs[0]
    request = hook_request("patient-view", tiny_data, meds=[tiny_data.drugs.codes[5]])
    jsonschema.validate(request, REQUEST)
    r = client.post("/cds-services/leader-patient-view", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(body, RESPONSE)
    suggest, *warnings = body["cards"]
    assert suggest["indicator"] == "info" and suggest["selectionBehavior"] == "any"
    assert suggest["source"]["label"].startswith("leader popular-")
    assert suggest["source"]["url"].endswith("/v1/model")
    assert [s["label"].split("(")[1][:4] for s in suggest["suggestions"]] == [a, b]
    assert "probability 0.90" in suggest["detail"]
    for s in suggest["suggestions"]:
        [action] = s["actions"]
        assert action["type"] == "create"
        draft = MedicationRequest.model_validate(action["resource"])
        assert draft.status == "draft" and draft.intent == "proposal"
        assert draft.medicationCodeableConcept.coding[0].system == "http://www.whocc.no/atc"
        assert draft.subject.reference == "Patient/pat-1"
    [warning] = warnings
    assert warning["indicator"] == "warning"
    assert tiny_data.drugs.title(a) in warning["summary"]
    assert tiny_data.drugs.title(b) in warning["summary"]
    # deterministic: the same request gives the same cards (uuids included)
    assert client.post("/cds-services/leader-patient-view", json=request).json() == body


def test_order_select_interactions_and_unlikely(client, tiny_data, monkeypatch):
    a, b = tiny_data.ddi_pairs[0]
    pair2 = next(p for p in tiny_data.ddi_pairs if a not in p and b not in p)
    other = next(c for c in tiny_data.drugs.codes if c not in (a, b, *pair2))
    drafts = searchset([medication("MedicationRequest", c, "draft") for c in (a, b, pair2[0])])
    request = hook_request("order-select", tiny_data, meds=[pair2[1], other],
                           selections=[f"MedicationRequest/med-{a}"], draftOrders=drafts)
    jsonschema.validate(request, REQUEST)
    monkeypatch.setattr(cds_module, "UNLIKELY_BELOW", 0.5)  # the ddi model gives 0.1 to pair2
    r = client.post("/cds-services/leader-order-select", json=request)
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    jsonschema.validate(r.json(), RESPONSE)
    warnings = [c["summary"] for c in cards if c["indicator"] == "warning"]
    assert len(warnings) == 2
    assert f"({a}) with" in warnings[0] and f"({b})" in warnings[0]  # among the drafts
    assert f"({pair2[0]}) with" in warnings[1] and f"({pair2[1]})" in warnings[1]  # with current
    unlikely = [c["summary"] for c in cards if c["indicator"] == "info"]
    assert len(unlikely) == 1 and f"({pair2[0]})" in unlikely[0]


def test_summary_is_clipped_to_140_characters():
    assert len(cds_module._clip("x" * 300)) < 140
    assert cds_module._clip("short") == "short"


def test_feedback_is_counted(app, client):
    body = {"feedback": [{"card": "9368d37b-283f-44a0-93ea-547cebab93d1", "outcome": "accepted",
                          "acceptedSuggestions": [{"id": "abc"}],
                          "outcomeTimestamp": "2026-12-06T10:00:00Z"}]}
    before = getattr(app.state, "cds_feedback", 0)
    r = client.post("/cds-services/leader-patient-view/feedback", json=body)
    assert r.status_code == 200 and r.json() == {}
    assert app.state.cds_feedback == before + 1


def test_missing_prefetch_is_412(client, tiny_data):
    request = hook_request("patient-view", tiny_data, meds=[])
    del request["prefetch"]["conditions"]
    r = client.post("/cds-services/leader-patient-view", json=request)
    assert r.status_code == 412 and "conditions" in r.json()["detail"]
    request["fhirServer"] = "https://ehr.example/fhir"  # a server is never queried
    assert client.post("/cds-services/leader-patient-view", json=request).status_code == 412
    del request["prefetch"]
    assert client.post("/cds-services/leader-patient-view", json=request).status_code == 412


def bad_requests(tiny_data):
    good = hook_request("patient-view", tiny_data, meds=[])
    cases = []

    def variant(change, status, expected):
        req = copy.deepcopy(good)
        change(req)
        cases.append((req, status, expected))

    variant(lambda r: r.update(hook="order-sign"), 404, "order-sign")
    variant(lambda r: r.update(hook="order-select"), 404, "not served by this service")
    variant(lambda r: r.pop("hookInstance"), 422, "hookInstance")
    variant(lambda r: r.update(context=[]), 422, "context")
    variant(lambda r: r["context"].pop("patientId"), 422, "patientId")
    variant(lambda r: r.update(prefetch="x"), 422, "prefetch")
    variant(lambda r: r["prefetch"].update(patient={"resourceType": "Observation"}), 422,
            "Patient")
    variant(lambda r: r["prefetch"].update(patient={"resourceType": "Patient", "gender": 5}), 422,
            "gender")
    variant(lambda r: r["prefetch"]["conditions"]["entry"][0]["resource"].update(code=7), 422,
            "code")
    variant(lambda r: r["prefetch"].update(conditions=[1, 2]), 422, "conditions")
    return cases


def test_bad_input_is_4xx_never_5xx(client, tiny_data):
    for req, status, expected in bad_requests(tiny_data):
        r = client.post("/cds-services/leader-patient-view", json=req)
        assert r.status_code == status, (req, r.text)
        assert expected in r.json()["detail"], r.text
    assert client.post("/cds-services/nope", json={}).status_code == 404
    assert client.post("/cds-services/nope/feedback", json={}).status_code == 404
    r = client.post("/cds-services/leader-patient-view", content=b"{",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/cds-services/leader-patient-view", content=b"x",
                    headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/cds-services/leader-order-select",
                    json=hook_request("order-select", tiny_data, meds=[]))
    assert r.status_code == 422 and "draftOrders" in r.json()["detail"]
    for fb in ({"feedback": []}, {"feedback": [{"card": "x", "outcome": "maybe"}]}, []):
        r = client.post("/cds-services/leader-patient-view/feedback", json=fb)
        assert r.status_code == 422, r.text


def test_auth_applies_to_cds(bundles, tiny_data):
    token = "s3cret-token-of-some-length"
    client = TestClient(create_app(leader.load(bundles["ddi"]), ServeSettings(token=token)),
                        base_url="http://127.0.0.1")
    assert client.get("/cds-services").status_code == 401
    ok = client.get("/cds-services", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    body = json.dumps(hook_request("patient-view", tiny_data, meds=[]))
    r = client.post("/cds-services/leader-patient-view", content=body,
                    headers={"content-type": "application/json"})
    assert r.status_code == 401


def mutations(obj, path=()):
    """Every path of a JSON value, for replacing what is there with a value of another type."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from mutations(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from mutations(v, (*path, i))


@pytest.mark.slow
def test_no_mutation_of_a_request_gets_a_5xx(client, tiny_data):
    a, b = tiny_data.ddi_pairs[0]
    drafts = searchset([medication("MedicationRequest", c, "draft") for c in (a, b)])
    good = hook_request("order-select", tiny_data, meds=[tiny_data.drugs.codes[5]],
                        selections=[f"MedicationRequest/med-{a}"], draftOrders=drafts)
    statuses = set()
    for path in list(mutations(good))[1:]:
        for junk in (None, 7, "x", [], {}, [{"resource": 1}]):
            req = copy.deepcopy(good)
            target = req
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = junk
            r = client.post("/cds-services/leader-order-select", json=req)
            assert r.status_code < 500, (path, junk, r.text)
            statuses.add(r.status_code)
    assert {200, 404, 412, 422} <= statuses

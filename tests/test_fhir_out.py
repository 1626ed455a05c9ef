"""FHIR out (REST `Accept: application/fhir+json`, `leader recommend --format fhir`) and
explanations in the REST answer and the CLI."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from helpers import make_bundle, run_cli, simple_patient

import leader
from leader.serve import ServeSettings, create_app

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def client(bundles):
    return TestClient(create_app(leader.load(bundles["ddi"]), ServeSettings()),
                      base_url="http://127.0.0.1")


def check_bundle(body: dict, pair: tuple[str, str]) -> None:
    bundle = Bundle.model_validate(body)  # the whole Bundle, every resource in it
    kinds = [e.resource.get_resource_type() for e in bundle.entry]
    assert kinds == ["MedicationRequest", "MedicationRequest", "DetectedIssue"]
    drafts = [e.resource for e in bundle.entry[:2]]
    assert [d.medicationCodeableConcept.coding[0].code for d in drafts] == list(pair)
    assert all(d.status == "draft" and d.intent == "proposal" for d in drafts)
    issue = bundle.entry[2].resource
    assert issue.code.coding[0].code == "DRG" and issue.severity == "high"
    assert [r.reference for r in issue.implicated] == [e.fullUrl for e in bundle.entry[:2]]


def test_rest_fhir_out(client, tiny_data):
    pair = tuple(tiny_data.ddi_pairs[0])
    r = client.post("/v1/recommend?top_k=2", json=simple_patient(tiny_data),
                    headers={"accept": FHIR})
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    check_bundle(r.json(), pair)
    again = client.post("/v1/recommend?top_k=2", json=simple_patient(tiny_data),
                        headers={"accept": FHIR})
    assert again.json() == r.json()  # stable ids
    batch = client.post("/v1/recommend/batch?top_k=2", headers={"accept": FHIR},
                        json={"patients": [simple_patient(tiny_data), make_bundle()]})
    assert batch.status_code == 200 and len(batch.json()["results"]) == 2
    for b in batch.json()["results"]:
        check_bundle(b, pair)
    plain = client.post("/v1/recommend", json=simple_patient(tiny_data))
    assert plain.headers["content-type"] == "application/json" and "ranked" in plain.json()


def test_rest_explain_in_body_or_query(client, tiny_data):
    patient = simple_patient(tiny_data, history=True)
    by_query = client.post("/v1/recommend?explain=true&top_k=2", json=patient).json()
    by_body = client.post("/v1/recommend?top_k=2", json={**patient, "explain": True}).json()
    assert by_query == by_body
    explanation = by_query["explanation"]
    assert explanation["method"] == "occlusion" and explanation["unit"] == "probability"
    assert set(explanation["drugs"]) == set(by_query["recommended"])
    plain = client.post("/v1/recommend?top_k=2", json=patient).json()
    assert "explanation" not in plain
    assert plain == {k: v for k, v in by_query.items() if k != "explanation"}
    batch = client.post("/v1/recommend/batch", json={"patients": [patient], "explain": True})
    assert batch.status_code == 200 and "explanation" in batch.json()["results"][0]
    fhir = client.post("/v1/recommend", json={**make_bundle(), "explain": True})
    assert fhir.status_code == 200 and "explanation" in fhir.json()
    for bad in ({**patient, "explain": "yes"}, {**patient, "explain": 1}):
        r = client.post("/v1/recommend", json=bad)
        assert r.status_code == 422 and "explain" in r.json()["detail"]
    r = client.post("/v1/recommend/batch", json={"patients": [patient], "explain": None})
    assert r.status_code == 422
    assert client.post("/v1/recommend?explain=maybe", json=patient).status_code == 422


def test_logreg_explanations_are_exact(tiny_data, tmp_path):
    from leader.bundle import save_bundle
    from leader.models.base import model_class

    model = model_class("logreg")(tiny_data.schema, {"max_iter": 50}).fit(tiny_data)
    rec = leader.load(save_bundle(model, tmp_path / "lr"))
    parsed = rec.read(simple_patient(tiny_data, history=True))
    [out] = rec.recommend_samples([parsed], top_k=3, explain=True)
    assert out["explanation"]["method"] == "exact"
    assert out["explanation"]["unit"] == "log-odds"
    reasons = [r for rs in out["explanation"]["drugs"].values() for r in rs]
    assert reasons and all(r["contribution"] > 0 for r in reasons)


def test_cli_fhir_and_explain(bundles, tiny_data, tmp_path, monkeypatch, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(simple_patient(tiny_data, history=True)))
    model = str(bundles["ddi"])
    code, out, _ = run_cli(["recommend", "-m", model, "-p", str(f), "--top-k", "2",
                            "--format", "fhir"], monkeypatch, capsys)
    assert code == 0
    check_bundle(json.loads(out), tuple(tiny_data.ddi_pairs[0]))
    code, out, _ = run_cli(["recommend", "-m", model, "-p", str(f), "--top-k", "2",
                            "--explain"], monkeypatch, capsys)
    assert code == 0 and "why (occlusion" in out
    code, out, _ = run_cli(["recommend", "-m", model, "-p", str(f), "--format", "json",
                            "--explain"], monkeypatch, capsys)
    assert code == 0 and "explanation" in json.loads(out)
    code, _, err = run_cli(["recommend", "-m", model, "-p", str(f), "--format", "xml"],
                           monkeypatch, capsys)
    assert code == 2 and "--format xml" in err
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(simple_patient(tiny_data)) + "\n")
    code, _, _ = run_cli(["recommend", "-m", model, "--patients", str(src), "--out",
                          str(tmp_path / "o.jsonl"), "--explain"], monkeypatch, capsys)
    assert code == 0 and "explanation" in (tmp_path / "o.jsonl").read_text()

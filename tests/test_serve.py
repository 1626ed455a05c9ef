"""The REST service through FastAPI's TestClient: every endpoint, auth, limits, and that no bad
request ever gets a 5xx."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from helpers import make_bundle, simple_patient

import leader
from leader.patient import Limits
from leader.serve import ServeSettings, create_app

TOKEN = "s3cret-token-of-some-length"
LOCAL = "http://127.0.0.1"  # the Host check admits loopback names only


@pytest.fixture(scope="module")
def small(rec):
    settings = ServeSettings(
        max_body_bytes=4096, max_batch=2, limits=Limits(max_visits=2, max_codes_per_visit=3)
    )
    return TestClient(create_app(rec, settings), base_url=LOCAL)


def post(client, path, body: bytes | str, ctype="application/json", **kw):
    return client.post(path, content=body, headers={"content-type": ctype, **kw})


def test_recommend_json_and_fhir(client, tiny_data):
    r = client.post("/v1/recommend?top_k=2", json=simple_patient(tiny_data))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recommended"] == list(tiny_data.ddi_pairs[0])
    assert body["ddi_warnings"][0]["names"][0] == tiny_data.drugs.title(tiny_data.ddi_pairs[0][0])
    assert r.headers["cache-control"] == "no-store"
    fhir = post(client, "/v1/recommend", json.dumps(make_bundle()), "application/fhir+json")
    assert fhir.status_code == 200 and fhir.json()["patient_id"] == "p1"


def test_unknown_codes_are_warnings_not_errors(client):
    r = client.post("/v1/recommend", json={"visits": [{"diagnoses": ["icd10:Z99.9"]}]})
    assert r.status_code == 200
    assert any("icd10:Z999" in w for w in r.json()["warnings"])


def test_batch(client, tiny_data):
    p = simple_patient(tiny_data)
    r = client.post("/v1/recommend/batch", json={"patients": [p, make_bundle()]})
    assert r.status_code == 200
    assert [x["patient_id"] for x in r.json()["results"]] == ["patient0", "p1"]
    bad = client.post("/v1/recommend/batch", json={"patients": [p, {"visits": [{"x": 1}]}]})
    assert bad.status_code == 422 and "patients[1]: patient.visits[0].x" in bad.json()["detail"]


def test_health_model_vocab_docs_page(client, tiny_data):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model"].startswith("popular-")
    model = client.get("/v1/model").json()
    assert model["metrics"] == {"test": {"jaccard": 0.25}}
    assert "not a prescriber" in model["card"]
    assert model["profile"]["gender"] == tiny_data.profile_vocab["gender"]
    assert model["default_icd_version"] == 9
    hits = client.get("/v1/vocab", params={"q": "401", "kind": "diagnoses"}).json()["results"]
    assert hits[0]["code"] == "icd9:401"
    titles = client.get("/v1/vocab", params={"q": "drug class N", "kind": "drugs"}).json()
    assert titles["results"] and all(h["code"].startswith("N") for h in titles["results"])
    doc = client.get("/openapi.json").json()
    assert "/v1/recommend" in doc["paths"] and "Patient" in doc["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and "patient-form" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_token_auth(rec, tiny_data):
    c = TestClient(create_app(rec, ServeSettings(token=TOKEN)), base_url=LOCAL)
    p = simple_patient(tiny_data)
    assert c.post("/v1/recommend", json=p).status_code == 401
    wrong = c.post("/v1/recommend", json=p, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert c.get("/v1/model", headers={"Authorization": TOKEN}).status_code == 401
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert c.post("/v1/recommend", json=p, headers=ok).status_code == 200
    assert c.get("/v1/model", headers=ok).status_code == 200
    assert c.get("/v1/vocab?q=4", headers=ok).status_code == 200
    assert c.get("/v1/vocab?q=4").status_code == 401
    assert c.get("/v1/health").status_code == 200  # liveness stays open


def test_body_limits(client, small, tiny_data):
    big = json.dumps({"visits": [{"diagnoses": ["4019"] * 200_000}]})
    assert len(big) > 1 << 20
    r = post(client, "/v1/recommend", big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert r.headers["connection"] == "close"  # the unread body must not poison keep-alive

    def stream():  # no Content-Length: the streamed size is checked
        for _ in range(10):
            yield b" " * 1000

    r = small.post("/v1/recommend", content=stream(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    lying = post(small, "/v1/recommend", b" " * 5000, **{"content-length": "10"})
    assert lying.status_code in (400, 413)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b"{", 400, "invalid JSON"),
        (b"", 400, "empty"),
        (b"\xff\xfe", 400, "invalid JSON"),
        (b"[" * 50_000 + b"]" * 50_000, 400, "invalid JSON"),
        (b"[]", 422, "expected a JSON object"),
        (b'"x"', 422, "expected a JSON object"),
        (b"{}", 422, "patient.visits: Field required"),
        (b'{"visits": []}', 422, "patient.visits: needs at least 1"),
        (b'{"visits": [{"diagnoses": [1, 2]}]}', 422, "diagnoses[0]"),
        (b'{"visits": [{"diagnoses": null}]}', 422, "diagnoses"),
        (b'{"visits": [{}], "extra": 1}', 422, "patient.extra: unknown field"),
        (b'{"visits": [{}], "profile": {"age": 1e999}}', 422, "profile.age"),
        (b'{"visits": [{}], "profile": {"age": NaN}}', 400, "NaN is not a JSON number"),
        (b'{"resourceType": "Bundle"}', 422, "invalid FHIR"),
        (b'{"resourceType": "Patient"}', 422, "expected a FHIR 'Bundle'"),
    ],
)
def test_bad_requests_get_clear_4xx(client, body, status, expected):
    r = post(client, "/v1/recommend", body)
    assert r.status_code == status, r.text
    assert expected in r.json()["detail"]


def test_limits_and_other_4xx(client, small):
    visits = {"visits": [{}, {}, {}]}
    r = small.post("/v1/recommend", json=visits)
    assert r.status_code == 422 and "at most 2" in r.json()["detail"]
    r = small.post("/v1/recommend", json={"visits": [{"procedures": ["1", "2", "3", "4"]}]})
    assert r.status_code == 422 and "at most 3" in r.json()["detail"]
    r = small.post("/v1/recommend/batch", json={"patients": [{"visits": [{}]}] * 3})
    assert r.status_code == 422 and "at most 2" in r.json()["detail"]
    for body in ({"patients": []}, {"patients": {}}, [], {"patients": [], "x": 1}):
        assert client.post("/v1/recommend/batch", json=body).status_code == 422
    assert post(client, "/v1/recommend", b"{}", "text/plain").status_code == 415
    form = "application/x-www-form-urlencoded"
    assert post(client, "/v1/recommend", b"{}", form).status_code == 415
    ok = {"visits": [{}]}
    for query in ("top_k=0", "top_k=x", "top_k=99999", "threshold=2", "threshold=nan"):
        r = client.post(f"/v1/recommend?{query}", json=ok)
        assert r.status_code == 422, (query, r.text)
    assert client.get("/v1/vocab?kind=secrets").status_code == 422
    assert client.get("/v1/vocab?q=" + "x" * 65).status_code == 422
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/recommend").status_code == 405
    assert client.get("/v1/health").status_code == 200


def test_concurrent_requests_share_model_calls_and_match_single_answers(bundles, tiny_data):
    import asyncio

    import httpx

    rec = leader.load(bundles["repeat-last"])
    app = create_app(rec, ServeSettings())
    drugs = tiny_data.drugs.codes
    patients = [
        {"visits": [{"diagnoses": [], "drugs": [drugs[i], drugs[i + 1]]}, {"diagnoses": []}]}
        for i in range(8)
    ]
    alone = [TestClient(app, base_url=LOCAL).post("/v1/recommend", json=p).json() for p in patients]
    calls_before = app.state.batcher.calls

    async def together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            return await asyncio.gather(*(client.post("/v1/recommend", json=p) for p in patients))

    answers = asyncio.run(together())
    assert [a.status_code for a in answers] == [200] * 8
    assert [a.json()["ranked"] for a in answers] == [a["ranked"] for a in alone]
    assert [a.json()["recommended"][:2] for a in answers] == [
        [drugs[i], drugs[i + 1]] for i in range(8)
    ]
    assert app.state.batcher.calls - calls_before < len(patients)

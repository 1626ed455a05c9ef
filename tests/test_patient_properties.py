"""Property-based patient input: whatever JSON patient or FHIR Bundle arrives, the API answers
200 or 4xx (never 5xx) and the CLI exits 0 or 2 (never a traceback).

The strategies mix arbitrary JSON with patients that are almost valid (right shape, hostile
values: Unicode digits, huge or negative numbers, odd codes, unknown fields) and with the
fixture FHIR Bundle mutated at random paths, so most examples reach deep into validation.
"""

from __future__ import annotations

import copy
import json

import pytest
from fastapi.testclient import TestClient
from helpers import make_bundle, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import leader
from leader.serve import ServeSettings, create_app

SETTINGS = settings(
    derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["²", "①", "٣", "２", "200", "-1", "64", "", " ", "icd10:I10", "N02B",
                     "00536338101", "401.9", "icd9:", "ndc:", "\u0000", "𝟗"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
codes = st.lists(st.one_of(st.text(min_size=1, max_size=40), scalars), max_size=6)
visit = st.fixed_dictionaries(
    {},
    optional={
        "diagnoses": st.one_of(codes, scalars),
        "procedures": codes,
        "drugs": codes,
        "icd_version": st.one_of(st.sampled_from([9, 10, 11, "9", 9.0, None]), scalars),
        "extra": scalars,
    },
)
profile = st.dictionaries(
    st.sampled_from(["age", "gender", "insurance", "language", "x", ""]) | st.text(max_size=8),
    st.one_of(scalars, json_values),
    max_size=6,
)
patients = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"visits": st.one_of(st.lists(visit, max_size=4), scalars)},
        optional={"profile": st.one_of(profile, scalars), "id": scalars, "notes": scalars},
    ),
)


@st.composite
def fhir_bundles(draw):
    """The fixture Bundle with a few values replaced, removed or nested deeper."""
    bundle = make_bundle()
    for _ in range(draw(st.integers(1, 4))):
        parent, key, node = None, None, bundle
        for _ in range(draw(st.integers(1, 6))):
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            if not children:
                break
            parent, (key, node) = node, draw(st.sampled_from(children))
            if not isinstance(node, dict | list):
                break
        if parent is None:
            continue
        action = draw(st.sampled_from(["replace", "delete", "wrap"]))
        if action == "delete":
            del parent[key]
        elif action == "wrap":
            wrapped = {"url": "http://x", "valueString": copy.deepcopy(node)}
            parent[key] = {"extension": [wrapped]}
        else:
            parent[key] = draw(json_values)
    return bundle


# valid in shape, so that most examples reach the mapping onto the model's vocabulary
good_code = st.text(min_size=1, max_size=32) | st.sampled_from(["icd9:400", "401.9", "N02B"])
near_valid = st.fixed_dictionaries(
    {
        "visits": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "diagnoses": st.lists(good_code, max_size=4),
                    "procedures": st.lists(good_code, max_size=2),
                    "drugs": st.lists(good_code, max_size=3),
                    "icd_version": st.sampled_from([9, 10, None]),
                },
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "profile": st.dictionaries(
            st.sampled_from(["age", "gender", "insurance", "religion"]) | st.text(max_size=8),
            st.none() | st.integers(-5, 200) | st.text(max_size=20) | scalars,
            max_size=4,
        ),
        "id": st.none() | st.text(max_size=20),
    },
)
inputs = st.one_of(patients, near_valid, fhir_bundles())


@pytest.fixture(scope="module")
def client(bundles):
    return TestClient(create_app(leader.load(bundles["ddi"]), ServeSettings()),
                      base_url="http://127.0.0.1")


@pytest.mark.slow
def test_api_answers_200_or_4xx(client):
    @given(body=inputs, batch=st.booleans())
    @settings(SETTINGS, max_examples=300)
    def check(body, batch):
        path, payload = ("/v1/recommend/batch", {"patients": [body]}) if batch else (
            "/v1/recommend", body)
        r = client.post(path, content=json.dumps(payload),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
        answer = r.json()
        if r.status_code == 200:
            assert answer["results"][0]["ranked"] if batch else answer["ranked"]
        else:
            assert isinstance(answer["detail"], str) and "\n" not in answer["detail"]

    check()


@pytest.mark.slow
def test_cli_exits_0_or_2(bundles, tmp_path, monkeypatch, capsys):
    model = str(bundles["popular"])
    path = tmp_path / "p.json"

    @given(body=inputs)
    @settings(SETTINGS, max_examples=25)
    def check(body):
        path.write_text(json.dumps(body))
        code, _, err = run_cli(["recommend", "-m", model, "-p", str(path), "--json"],
                               monkeypatch, capsys)
        assert code in (0, 2) and "Traceback" not in err, err
        if code == 2:
            assert len(err.strip().splitlines()) == 1

    check()

"""The patient schema (strict types, limits, unknown fields) and its mapping onto a model."""

from __future__ import annotations

import pytest
from helpers import simple_patient

import leader
from leader.errors import LeaderError
from leader.patient import (
    Limits,
    PatientReader,
    default_icd_version,
    drug_code,
    icd_code,
    patient_json_schema,
    validate_patient,
)


def test_good_patient_minimal_and_full():
    p = validate_patient({"visits": [{}]})
    assert p.profile == {} and p.visits[0].diagnoses == []
    full = validate_patient(
        {
            "id": "p-1",
            "profile": {"gender": "F", "age": 64, "religion": None},
            "visits": [
                {"diagnoses": ["401.9"], "procedures": ["3893"], "drugs": ["N02B"]},
                {"diagnoses": ["icd10:I10"], "icd_version": 10},
            ],
        }
    )
    assert full.visits[1].icd_version == 10 and full.id == "p-1"


@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        ([], "expected a JSON object"),
        ({}, "patient.visits: Field required"),
        ({"visits": []}, "patient.visits: needs at least 1"),
        ({"visits": "x"}, "patient.visits"),
        ({"visits": [{"diagnoses": "4019"}]}, "patient.visits[0].diagnoses"),
        ({"visits": [{"diagnoses": [4019]}]}, "patient.visits[0].diagnoses[0]"),
        ({"visits": [{"icd_version": "9"}]}, "patient.visits[0].icd_version"),
        ({"visits": [{"icd_version": 11}]}, "patient.visits[0].icd_version"),
        ({"visits": [{"diagnoses": [""]}]}, "patient.visits[0].diagnoses[0]"),
        ({"visits": [{"diagnoses": ["x" * 33]}]}, "at most 32 characters"),
        ({"visits": [{}], "profile": {"age": True}}, "patient.profile.age"),
        ({"visits": [{}], "profile": {"age": 400}}, "patient.profile.age"),
        ({"visits": [{}], "profile": {"x": [1]}}, "patient.profile.x"),
        ({"visits": [{}], "profile": []}, "patient.profile"),
        ({"visits": [{}], "notes": "x"}, "patient.notes: unknown field"),
        ({"visits": [{"diagnosis": ["4019"]}]}, "patient.visits[0].diagnosis: unknown field"),
    ],
)
def test_bad_patients_name_the_field(patient, expected):
    with pytest.raises(LeaderError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_patient(patient)


def test_limits_are_configurable_and_named():
    limits = Limits(max_visits=2, max_codes_per_visit=3, max_code_length=8)
    with pytest.raises(LeaderError, match=r"patient.visits: too many items \(at most 2\)"):
        validate_patient({"visits": [{}, {}, {}]}, limits)
    with pytest.raises(LeaderError, match=r"diagnoses: too many items \(at most 3\)"):
        validate_patient({"visits": [{"diagnoses": ["1", "2", "3", "4"]}]}, limits)
    with pytest.raises(LeaderError, match="at most 8 characters"):
        validate_patient({"visits": [{"drugs": ["123456789"]}]}, limits)
    default = 100
    validate_patient({"visits": [{}] * default})
    with pytest.raises(LeaderError, match="at most 100"):
        validate_patient({"visits": [{}] * (default + 1)})


def test_json_schema_export():
    schema = patient_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["visits"]["maxItems"] == 100
    visit = schema["$defs"]["VisitIn"]
    assert visit["additionalProperties"] is False
    assert visit["properties"]["diagnoses"]["maxItems"] == 1000


def test_code_canonicalisation():
    assert icd_code("401.9", 9) == "icd9:4019"
    assert icd_code("ICD10:i10", 9) == "icd10:I10"
    assert icd_code(" I10 ", 10) == "icd10:I10"
    assert drug_code("n02be01") == "N02B"
    assert drug_code("atc:N02B") == "N02B"
    assert drug_code("00002202402") == "A12C"  # from the bundled NDC table, as in prepare
    assert drug_code("ndc:0002-2024-02") == "A12C"
    assert drug_code("99999999999") is None
    assert drug_code("hello") is None


def test_mapping_unknown_codes_and_profile(tiny_data):
    reader = PatientReader(tiny_data.schema)
    assert reader.default_icd_version == default_icd_version(tiny_data.schema) == 9
    dx = tiny_data.vocab["diagnoses"].codes[0]  # icd9:400
    sample, warnings = reader.to_sample(
        {
            "profile": {"gender": "X", "age": 70, "shoe_size": "42"},
            "visits": [
                {"diagnoses": ["400", "icd10:I10"], "drugs": ["A00A", "00002202402", "junk"]},
                {"diagnoses": [dx.split(":")[1] + ".", "999.9"], "drugs": ["A00A"]},
            ],
        }
    )
    assert sample.visits[0].diagnoses == (dx,) and sample.visits[0].drugs == ("A00A",)
    assert sample.visits[1].diagnoses == (dx,) and sample.visits[1].drugs == ()
    text = "\n".join(warnings)
    assert "icd10:I10" in text and "icd9:9999" in text
    assert "A12C" in text  # mapped from the NDC, but not in this model's vocabulary
    assert "'junk'" in text
    assert "its drugs are ignored" in text
    assert "shoe_size" in text and "profile.gender: value 'X'" in text
    assert sample.profile["age"] == 70 and sample.profile["religion"] == "unknown"


def test_recommend_output_and_ddi_warning(tiny_data, bundles):
    rec = leader.load(bundles["ddi"])
    out = rec.recommend(simple_patient(tiny_data), top_k=2)
    a, b = tiny_data.ddi_pairs[0]
    assert out["recommended"] == [a, b]
    assert out["ddi_warnings"] == [
        {"drugs": [a, b], "names": [tiny_data.drugs.title(a), tiny_data.drugs.title(b)]}
    ]
    assert out["model"]["name"] == "popular" and out["model"]["id"].startswith("popular-")
    assert out["model"]["version"] == leader.__version__
    # threshold mode: the bundle's 0.5 keeps the two classes above it
    assert rec.recommend(simple_patient(tiny_data))["recommended"] == [a, b]
    strict = rec.recommend_many([simple_patient(tiny_data)], threshold=0.95)[0]
    assert strict["recommended"] == [] and strict["threshold"] == 0.95
    with pytest.raises(LeaderError, match="top_k"):
        rec.recommend(simple_patient(tiny_data), top_k=0)


def test_every_bundle_recommends_the_same_way(tiny_data, bundles):
    patient = simple_patient(tiny_data, history=True)
    for name in ("popular", "repeat-last"):
        rec = leader.load(bundles[name])
        out = rec.recommend(patient)
        assert len(out["ranked"]) == len(tiny_data.drugs)
        probs = [d["probability"] for d in out["ranked"]]
        assert probs == sorted(probs, reverse=True)
    repeated = leader.load(bundles["repeat-last"]).recommend(patient)
    assert set(patient["visits"][0]["drugs"]) <= set(repeated["recommended"])


def test_recommend_many_names_the_bad_patient(tiny_data, bundles):
    rec = leader.load(bundles["popular"])
    good = simple_patient(tiny_data)
    assert len(rec.recommend_many([good, good])) == 2
    with pytest.raises(LeaderError, match=r"patients\[1\]: patient.visits"):
        rec.recommend_many([good, {"visits": []}])

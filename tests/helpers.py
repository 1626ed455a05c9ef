"""Helpers shared by the test modules: model bundles, patients, FHIR Bundles, the CLI runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import leader.bundle as bundle
from leader.fhir import ATC, ICD9, ICD10CM, ICD10PCS, NDC, PROFILE_EXT
from leader.models.base import model_class


def dead_pid() -> int:
    """The process id of a process that has exited: the writer of a killed run's temp files."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def save(model, out: Path) -> Path:
    return bundle.save_bundle(model, out, metrics={"test": {"jaccard": 0.25}})


def make_bundles(tiny_data, root: Path) -> dict[str, Path]:
    """``popular`` and ``repeat-last`` fitted on the fixture; ``ddi``: a popular model whose two
    most probable classes are an interacting pair of the fixture's DDI list."""
    out = {}
    for name in ("popular", "repeat-last"):
        out[name] = save(model_class(name)(tiny_data.schema).fit(tiny_data), root / name)
    a, b = tiny_data.ddi_pairs[0]
    model = model_class("popular")(tiny_data.schema)
    model.build()
    freq = torch.full((len(tiny_data.drugs),), 0.1)
    freq[tiny_data.drugs.index[a]] = 0.9
    freq[tiny_data.drugs.index[b]] = 0.8
    model.frequency = freq
    out["ddi"] = save(model, root / "ddi")
    return out


def simple_patient(data, history: bool = False) -> dict:
    """A two-code current visit; with ``history``, an earlier visit with two drugs."""
    dx = data.vocab["diagnoses"].codes
    px = data.vocab["procedures"].codes
    visits = [{"diagnoses": [dx[0], dx[1]], "procedures": [px[0]]}]
    if history:
        visits.insert(
            0, {"diagnoses": [dx[2]], "procedures": [], "drugs": list(data.drugs.codes[3:5])}
        )
    return {"profile": {"gender": "F", "age": 70, "insurance": "Medicare"}, "visits": visits}


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `leader ...` in-process through the real entry point (error handling included)."""
    from leader.cli import main

    monkeypatch.setattr(sys, "argv", ["leader", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- FHIR R4 Bundles ---------------------------------------------------------------------------


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


# --- hostile input ---------------------------------------------------------------------------

# every character Python's str.isdigit() accepts that int() does not (², ①, ...), and a sample
# of the decimal digits of other scripts, which int() does accept
NOT_ASCII_DIGITS = [
    *sorted(c for c in map(chr, range(0x80, 0x3000)) if c.isdigit() and not c.isdecimal())[:20],
    *map(chr, range(0x660, 0x66A)),  # Arabic-Indic 0-9
    "\uff11",  # fullwidth 1
    "\u0967",  # Devanagari 1
    "1\u0661",  # mixed scripts
]


def age_bundle(age: str | None = None, birth: str | None = None) -> dict:
    b = make_bundle()
    pat = b["entry"][0]["resource"]
    if age is not None:
        pat["extension"] = [{"url": PROFILE_EXT + "age", "valueString": age}]
    if birth is not None:
        pat["birthDate"] = birth
    return b

"""A bad-input corpus for the CLI: every class of issue 13 and the other obvious ones.

Each case builds its input, runs `leader ...` in-process through the real entry point and
asserts: exit status 2, exactly one line on stderr naming the file, row or field, no
traceback, and nothing new or changed on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import NOT_ASCII_DIGITS, age_bundle, make_bundle, run_cli, simple_patient
from safetensors.torch import load_file, save_file

from leader.artifacts import sha256_file
from leader.data.sources.mimic3 import demo_root


@dataclass
class Ctx:
    tmp: Path
    model: Path  # a working bundle (not to be edited)
    data: Path  # a prepared DATA_DIR
    patient: dict


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones included) with its content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = sha256_file(p) if p.is_file() and not p.is_symlink() else "dir/link"
    return out


def write(ctx: Ctx, name: str, content: bytes | str) -> Path:
    path = ctx.tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def patient_file(obj) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        value = obj(ctx) if callable(obj) else obj
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        return ["recommend", "-m", str(ctx.model), "-p", str(write(ctx, "p.json", body))]

    return build


def aged(age) -> Callable[[Ctx], dict]:
    return lambda ctx: {**ctx.patient, "profile": {**ctx.patient["profile"], "age": age}}


def deep_fhir(depth: int) -> dict:
    ext: dict = {"url": "http://x", "valueString": "v"}
    for _ in range(depth):
        ext = {"url": "http://x", "extension": [ext]}
    b = make_bundle()
    b["entry"][0]["resource"]["extension"] = [ext]
    return b


def damaged_bundle(edit: Callable[[dict, Path], None]) -> Callable[[Ctx], list[str]]:
    """A copy of the working bundle with ``edit(manifest, directory)`` applied."""

    def build(ctx: Ctx) -> list[str]:
        copy = ctx.tmp / "bundle"
        shutil.copytree(ctx.model, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        edit(manifest, copy)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        good = write(ctx, "p.json", json.dumps(ctx.patient))
        return ["recommend", "-m", str(copy), "-p", str(good), "--json"]

    return build


def set_field(key: str, value) -> Callable[[dict, Path], None]:
    def edit(manifest: dict, _: Path) -> None:
        manifest[key] = value

    return edit


def nan_weights(manifest: dict, directory: Path) -> None:
    """NaN in the weights, and the manifest's hash updated to match."""
    path = directory / "weights.safetensors"
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], math.nan)
    save_file(tensors, str(path))
    manifest["files"]["weights.safetensors"] = sha256_file(path)


def raw_manifest_text(text: str) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        copy = ctx.tmp / "bundle"
        shutil.copytree(ctx.model, copy)
        (copy / "manifest.json").write_text(text)
        good = write(ctx, "p.json", json.dumps(ctx.patient))
        return ["recommend", "-m", str(copy), "-p", str(good)]

    return build


def jsonl_out(out: Callable[[Ctx], Path]) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        src = write(ctx, "in.jsonl", json.dumps(ctx.patient) + "\n")
        return ["recommend", "-m", str(ctx.model), "--patients", str(src), "-o", str(out(ctx))]

    return build


def artifact_out(out: Callable[[Ctx], Path]) -> Callable[[Ctx], list[str]]:
    """A directory artifact (a `popular` bundle: instant to train) written to ``out``."""

    def build(ctx: Ctx) -> list[str]:
        return ["train-baseline", "popular", "--data", str(ctx.data), "--out", str(out(ctx))]

    return build


def a_file(ctx: Ctx) -> Path:
    return write(ctx, "plain.txt", "x")


def dangling(ctx: Ctx) -> Path:
    link = ctx.tmp / "link"
    link.symlink_to(ctx.tmp / "nowhere")
    return link


def ddi_file(content: bytes | str) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        path = write(ctx, "pairs.csv", content)
        return ["prepare", "--source", "mimic3", "--root", "demo", "--out",
                str(ctx.tmp / "out"), "--ddi", str(path)]

    return build


def raw_table(name: str, edit: Callable[[bytes], bytes], gz: bool = False):
    """The bundled demo tables with one of them edited (``gz``: written as NAME.gz)."""

    def build(ctx: Ctx) -> list[str]:
        raw = ctx.tmp / "raw"
        raw.mkdir()
        for p in demo_root().glob("*.csv"):
            shutil.copy(p, raw / p.name)
        data = edit((raw / name).read_bytes())
        if gz:
            (raw / name).unlink()
            (raw / f"{name}.gz").write_bytes(data)
        else:
            (raw / name).write_bytes(data)
        return ["prepare", "--source", "mimic3", "--root", str(raw), "--out", str(ctx.tmp / "out")]

    return build


def truncated_gzip(data: bytes) -> bytes:
    packed = gzip.compress(data)
    return packed[: len(packed) // 2]


def bad_crc_gzip(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[-8] ^= 0xFF  # the CRC-32 in the trailer
    return bytes(packed)


DIGEST = "0" * 64
CASES = [
    # finding 1: ages that are not JSON whole numbers 0-150, and FHIR ages
    *[pytest.param(patient_file(aged(a)), "profile.age", id=f"age-{a!r}")
      for a in [*NOT_ASCII_DIGITS[:6], "200", "64", 151, -1, 7.5, True]],
    pytest.param(patient_file(age_bundle(age="²")), "age", id="fhir-age-superscript"),
    pytest.param(patient_file(age_bundle(birth="2999-01-01")), "birthDate", id="fhir-born-after"),
    # finding 3: deep nesting
    pytest.param(patient_file(deep_fhir(122)), "nested more than", id="fhir-deep-122"),
    pytest.param(patient_file(b"[" * 100_000 + b"]" * 100_000), "nested too deeply",
                 id="deep-json"),
    # JSON and encodings
    pytest.param(patient_file(b""), "p.json: not valid JSON", id="empty-file"),
    pytest.param(patient_file(b"   \n"), "p.json: not valid JSON", id="blank-file"),
    pytest.param(patient_file(b'{"visits": [{}], "profile": {"gender": "\xe9"}}'),
                 "not UTF-8", id="latin-1"),
    pytest.param(patient_file(b"\x00\x01\x02"), "p.json: not valid JSON", id="binary"),
    pytest.param(patient_file(b'{"visits": [{}], "profile": {"age": NaN}}'), "NaN",
                 id="nan-constant"),
    pytest.param(patient_file(b'{"visits": [{}], "profile": {"age": ' + b"9" * 5000 + b"}}"),
                 "too many digits", id="huge-int"),
    pytest.param(patient_file(b"[1, 2]"), "expected a JSON object", id="array"),
    pytest.param(patient_file({"visits": [{"diagnoses": ["x" * 100_000]}]}),
                 "at most 32 characters", id="huge-field"),
    pytest.param(patient_file({"visits": [{}], "profile": {"k" * 10: "v" * 100_000}}),
                 "at most 128 characters", id="huge-profile-value"),
    pytest.param(patient_file({"visits": [{}], "profile": {"x": [1]}}), "patient.profile.x",
                 id="profile-list"),
    # finding 6: output paths
    pytest.param(jsonl_out(lambda c: c.tmp / "missing-dir" / "x.jsonl"), "does not exist",
                 id="jsonl-missing-dir"),
    pytest.param(jsonl_out(lambda c: a_file(c) / "x.jsonl"), "plain.txt",
                 id="jsonl-under-a-file"),
    pytest.param(jsonl_out(lambda c: c.tmp), "is a directory", id="jsonl-out-is-a-dir"),
    pytest.param(jsonl_out(dangling), "already exists", id="jsonl-dangling-link"),
    pytest.param(jsonl_out(lambda c: Path("/proc/leader-out.jsonl")), "leader-out.jsonl",
                 id="jsonl-virtual-fs"),
    pytest.param(artifact_out(lambda c: a_file(c) / "model"), "plain.txt",
                 id="artifact-under-a-file"),
    pytest.param(artifact_out(lambda c: a_file(c)), "not a directory", id="artifact-is-a-file"),
    pytest.param(artifact_out(dangling), "does not exist", id="artifact-dangling-link"),
    pytest.param(artifact_out(lambda c: Path("/proc/leader-model")), "/proc/leader-model",
                 id="artifact-virtual-fs"),
    pytest.param(artifact_out(lambda c: Path("/sys/leader-model")), "/sys/leader-model",
                 id="artifact-sysfs"),
    # finding 7: damaged bundles of each kind
    *[pytest.param(damaged_bundle(set_field("threshold", v)), "threshold", id=f"threshold-{v!r}")
      for v in ["abc", None, "nan", "0.5", 2, -0.1, True, 1e309]],
    pytest.param(damaged_bundle(set_field("files", [])), "files", id="files-list"),
    pytest.param(damaged_bundle(set_field("files", {})), "files", id="files-empty"),
    pytest.param(damaged_bundle(set_field("files", {"../x": DIGEST})), "inside the bundle",
                 id="files-escape"),
    pytest.param(damaged_bundle(set_field("files", {"weights.safetensors": 5})), "SHA-256",
                 id="files-digest-type"),
    pytest.param(damaged_bundle(set_field("model", ["popular"])), "model", id="model-type"),
    pytest.param(damaged_bundle(set_field("format_version", "1")), "format_version",
                 id="format-version"),
    pytest.param(damaged_bundle(nan_weights), "NaN", id="nan-weights"),
    pytest.param(raw_manifest_text('{"kind": "leader-model", "threshold": NaN'), "manifest.json",
                 id="manifest-truncated"),
    pytest.param(raw_manifest_text("[]"), "manifest.json", id="manifest-array"),
    # finding 12: a DDI file without pairs, and other DDI faults
    pytest.param(ddi_file("atc_a,atc_b\n"), "no pairs", id="ddi-header-only"),
    pytest.param(ddi_file(""), "empty file", id="ddi-empty"),
    pytest.param(ddi_file("N02B;A01A\n"), "columns", id="ddi-semicolons"),
    pytest.param(ddi_file("N02B,A01A,B01A\n"), "columns", id="ddi-three-columns"),
    pytest.param(ddi_file("N02B,A01A\nN02B,\xe9\n".encode("latin-1")), "pairs.csv",
                 id="ddi-latin-1"),
    # CSV faults in the raw tables
    pytest.param(raw_table("DIAGNOSES_ICD.csv", lambda d: d.replace(
        b"row_id,subject_id,hadm_id,seq_num,icd9_code",
        b"icd9_code,subject_id,hadm_id,seq_num,icd9_code")), "icd9_code",
        id="csv-duplicate-column"),
    pytest.param(raw_table("DIAGNOSES_ICD.csv", truncated_gzip, gz=True), "DIAGNOSES_ICD",
                 id="gzip-truncated"),
    pytest.param(raw_table("DIAGNOSES_ICD.csv", bad_crc_gzip, gz=True), "DIAGNOSES_ICD",
                 id="gzip-bad-crc"),
    pytest.param(raw_table("PATIENTS.csv", lambda d: b""), "PATIENTS.csv", id="csv-empty"),
    pytest.param(raw_table("PATIENTS.csv", lambda d: d.split(b"\n")[0] + b"\n"), "PATIENTS",
                 id="csv-header-only"),
]


@pytest.fixture(scope="module")
def ctx_base(bundles, tiny_data_dir, tiny_data):
    return bundles["popular"], tiny_data_dir, simple_patient(tiny_data)


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_input_exits_2_with_one_line_and_nothing_on_disk(
    build, expected, ctx_base, tmp_path, monkeypatch, capsys
):
    model, data, patient = ctx_base
    ctx = Ctx(tmp_path, model, data, patient)
    args = build(ctx)
    watched = [tmp_path, model, data]
    before = [snapshot(p) for p in watched]
    code, _, err = run_cli(args, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err, lines[0]
    assert [snapshot(p) for p in watched] == before
    assert not Path("/proc/leader-model").exists() and not Path("/sys/leader-model").exists()


def test_a_bad_line_never_stops_a_batch(ctx_base, tmp_path, monkeypatch, capsys):
    """Every patient class above as a JSONL line: each gets an error record, the rest score."""
    model, _, patient = ctx_base
    good = json.dumps(patient)
    bad = [
        *(json.dumps({**patient, "profile": {"age": a}}) for a in [*NOT_ASCII_DIGITS, "200"]),
        json.dumps(age_bundle(age="²")),
        json.dumps(age_bundle(birth="2999-01-01")),
        json.dumps(deep_fhir(122)),
        "[" * 100_000 + "]" * 100_000,
        '{"visits": [{}], "profile": {"age": NaN}}',
        '{"visits": [{}], "profile": {"age": ' + "9" * 5000 + "}}",
        "[1, 2]",
        "{not json",
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        "\n".join([good, *bad, good]).encode() + b"\n\xff\xfe not utf-8\n" + good.encode() + b"\n"
    )
    out = tmp_path / "out.jsonl"
    args = ["recommend", "-m", str(model), "--patients", str(src), "-o", str(out)]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "Traceback" not in err, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(bad) + 4
    errors = [r for r in records if "error" in r]
    assert len(errors) == len(bad) + 1 and "3 patients scored" in stdout
    assert all(r["error"].startswith(f"line {r['line']}: ") for r in errors)


def test_symlinked_out_writes_through_the_link(ctx_base, tmp_path, monkeypatch, capsys):
    _, data, _ = ctx_base
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    args = ["train-baseline", "popular", "--data", str(data), "--out", str(link)]
    assert run_cli(args, monkeypatch, capsys)[0] == 0
    assert link.is_symlink() and (target / "manifest.json").is_file()
    code, _, _ = run_cli([*args, "--force"], monkeypatch, capsys)
    assert code == 0 and link.is_symlink() and (target / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]  # no .old / .tmp


def test_digest_of_corpus_inputs_is_stable():
    """The corpus must be deterministic (no random names), or a failure cannot be replayed."""
    names = [c.id for c in CASES]
    assert len(names) == len(set(names))
    assert hashlib.sha256("".join(names).encode()).hexdigest()

"""`leader recommend` (single patient, FHIR, batch JSONL) and `leader serve`'s bad options."""

from __future__ import annotations

import json
import os

from helpers import make_bundle, run_cli, simple_patient


def test_single_patient_table_and_json(tmp_path, bundles, tiny_data, monkeypatch, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(simple_patient(tiny_data)))
    code, out, err = run_cli(
        ["recommend", "--model", str(bundles["ddi"]), "--patient", str(f), "--top-k", "2"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    a, b = tiny_data.ddi_pairs[0]
    assert "2 drug classes recommended" in out and "recommended" in out
    assert "interaction" in out and a in out and b in out
    code, out, _ = run_cli(
        ["recommend", "-m", str(bundles["popular"]), "-p", str(f), "--json"], monkeypatch, capsys
    )
    assert code == 0 and json.loads(out)["model"]["name"] == "popular"


def test_fhir_file_is_detected(tmp_path, bundles, monkeypatch, capsys):
    f = tmp_path / "bundle.json"
    f.write_text(json.dumps(make_bundle()))
    code, out, _ = run_cli(
        ["recommend", "-m", str(bundles["repeat-last"]), "-p", str(f), "--json"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and json.loads(out)["patient_id"] == "p1"


def test_batch_with_a_bad_line(tmp_path, bundles, tiny_data, monkeypatch, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = json.dumps(simple_patient(tiny_data, history=True))
    lines = [good, "{not json", "", json.dumps({"visits": []}), json.dumps(make_bundle()), good]
    src.write_text("\n".join(lines) + "\n")
    args = ["recommend", "-m", str(bundles["popular"]), "--patients", str(src), "--out", str(out)]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 4, 5, 6]  # the blank line 3 is skipped
    assert records[1]["error"].startswith("line 2: not valid JSON")
    assert "line 4: patient.visits" in records[2]["error"]
    assert records[0]["ranked"] and records[3]["patient_id"] == "p1"
    assert "3 patients scored" in stdout and "2 line(s) failed" in err
    # the output exists now: refused without --force, nothing changed
    before = out.read_text()
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "--force" in err and out.read_text() == before
    # a killed run's temp is cleared by the next run; a live writer's is left alone
    from helpers import dead_pid

    killed = tmp_path / f".out.jsonl.tmp-{dead_pid()}"
    killed.write_text("half")
    live = tmp_path / f".out.jsonl.tmp-{os.getppid()}"
    live.write_text("being written")
    code, _, _ = run_cli([*args, "--force"], monkeypatch, capsys)
    assert code == 0 and not killed.exists() and live.exists()


def test_bad_input_exits_2_naming_the_thing(tmp_path, bundles, monkeypatch, capsys):
    model = str(bundles["popular"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"visits": [{"diagnoses": "4019"}]}')
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    cases = [
        (["-p", str(tmp_path / "none.json")], "none.json: file not found"),
        (["-p", str(bad)], "bad.json: patient.visits[0].diagnoses"),
        (["-p", str(broken)], "broken.json: not valid JSON"),
        (["-p", str(bad), "--patients", str(bad), "-o", str(tmp_path / "o")], "exactly one"),
        ([], "exactly one"),
        (["--patients", str(bad)], "--patients needs --out"),
        (["--patients", str(tmp_path / "no.jsonl"), "-o", str(tmp_path / "o.jsonl")], "no.jsonl"),
        (["-p", str(bad), "--top-k", "0"], "top_k"),
    ]
    for extra, expected in cases:
        code, _, err = run_cli(["recommend", "-m", model, *extra], monkeypatch, capsys)
        assert code == 2, (extra, err)
        assert expected in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".*.tmp*"))
    code, _, err = run_cli(["recommend", "-m", str(tmp_path), "-p", str(bad)], monkeypatch, capsys)
    assert code == 2 and "manifest.json" in err


def test_serve_refuses_bad_token_file(tmp_path, bundles, monkeypatch, capsys):
    model = str(bundles["popular"])
    code, _, err = run_cli(
        ["serve", "-m", model, "--token-file", str(tmp_path / "missing")], monkeypatch, capsys
    )
    assert code == 2 and "token file not found" in err
    short = tmp_path / "token"
    short.write_text("abc\n")
    code, _, err = run_cli(["serve", "-m", model, "--token-file", str(short)], monkeypatch, capsys)
    assert code == 2 and "at least 16 characters" in err

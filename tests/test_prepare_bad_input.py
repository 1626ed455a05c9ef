"""Bad input to `leader prepare`: exit 2, a one-line message naming the file/row/column, no
traceback, nothing left behind, nothing overwritten without --force; per-row issues are counted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from leader.artifacts import sha256_file
from leader.data.sources.mimic3 import demo_root

TABLES = ["ADMISSIONS.csv", "PATIENTS.csv", "DIAGNOSES_ICD.csv", "PROCEDURES_ICD.csv",
          "PRESCRIPTIONS.csv", "D_ICD_DIAGNOSES.csv", "D_ICD_PROCEDURES.csv"]


def raw_copy(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in TABLES:
        shutil.copy(demo_root() / name, raw / name)
    return raw


def edit_line(path: Path, index: int, fn) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = fn(lines[index])
    path.write_text("".join(lines))


def set_field(line: str, column: int, value: str) -> str:
    """Replace one field of a simple CSV line (demo rows used here have no quoted commas)."""
    fields = line.rstrip("\n").split(",")
    fields[column] = value
    return ",".join(fields) + "\n"


def assert_refused(tmp_path, monkeypatch, capsys, raw, *expected, extra=()) -> str:
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["prepare", "--source", "mimic3", "--root", str(raw), "--out", str(out), *extra],
        monkeypatch, capsys,
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dirs left
    return lines[0]


def test_missing_file(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    (raw / "PRESCRIPTIONS.csv").unlink()
    assert_refused(tmp_path, monkeypatch, capsys, raw, "PRESCRIPTIONS.csv", "file not found")


def test_missing_root(tmp_path, monkeypatch, capsys):
    assert_refused(tmp_path, monkeypatch, capsys, tmp_path / "nowhere", "nowhere",
                   "directory not found")


def test_missing_column(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    edit_line(raw / "PRESCRIPTIONS.csv", 0, lambda line: line.replace(",ndc,", ",ndc_code,"))
    assert_refused(tmp_path, monkeypatch, capsys, raw, "PRESCRIPTIONS.csv", "missing column ndc")


def test_wrong_header(tmp_path, monkeypatch, capsys):
    """A table whose header row is missing: its first data row is not a header."""
    raw = raw_copy(tmp_path)
    path = raw / "DIAGNOSES_ICD.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    assert_refused(tmp_path, monkeypatch, capsys, raw, "DIAGNOSES_ICD.csv",
                   "missing column hadm_id, icd9_code")


def test_empty_file(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    (raw / "PATIENTS.csv").write_text("")
    assert_refused(tmp_path, monkeypatch, capsys, raw, "PATIENTS.csv", "empty file")


def test_non_numeric_hadm_id(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    edit_line(raw / "DIAGNOSES_ICD.csv", 3, lambda line: set_field(line, 2, "12x45"))
    assert_refused(tmp_path, monkeypatch, capsys, raw,
                   "DIAGNOSES_ICD.csv row 3: column hadm_id: expected an integer admission id, "
                   "got '12x45'")


def test_unparsable_admittime(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    edit_line(raw / "ADMISSIONS.csv", 5, lambda line: set_field(line, 3, "31/12/2150 10:00"))
    assert_refused(tmp_path, monkeypatch, capsys, raw,
                   "ADMISSIONS.csv row 5: column admittime: expected a date-time",
                   "got '31/12/2150 10:00'")


def test_broken_csv_quoting(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    edit_line(raw / "PROCEDURES_ICD.csv", 2, lambda line: set_field(line, 4, '"3722'))
    assert_refused(tmp_path, monkeypatch, capsys, raw, "PROCEDURES_ICD.csv",
                   "cannot parse as CSV")


def test_empty_cohort_after_filtering(tmp_path, monkeypatch, capsys):
    raw = raw_copy(tmp_path)
    path = raw / "PROCEDURES_ICD.csv"
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # header only
    assert_refused(tmp_path, monkeypatch, capsys, raw, "no visits left",
                   "visits_without_procedures")


def test_empty_cohort_by_min_visits(tmp_path, monkeypatch, capsys):
    assert_refused(tmp_path, monkeypatch, capsys, "demo", "no visits left",
                   extra=["--min-visits", "50"])


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--split", "0.8,0.1"], "--split"),
        (["--split", "0.8,0.3,0.1"], "summing to 1"),
        (["--top-drugs", "-3"], "--top-drugs: -3"),
        (["--min-visits", "0"], "--min-visits: 0: expected 1 or more"),
    ],
)
def test_bad_options(tmp_path, monkeypatch, capsys, extra, expected):
    assert_refused(tmp_path, monkeypatch, capsys, "demo", expected, extra=extra)


def test_bad_source(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["prepare", "--source", "mimic5", "--root", "demo", "--out", str(out)],
                           monkeypatch, capsys)
    assert code == 2 and "mimic5" in err and not out.exists()


def test_bad_ddi_file(tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\nN02B,A01A\nN02B,not-a-code\n")
    assert_refused(tmp_path, monkeypatch, capsys, "demo", "pairs.csv row 3",
                   "expected an ATC level-3 code", extra=["--ddi", str(pairs)])


def test_user_ddi_file(tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("N02B,A02B\nB01A,N02B\nZ99Z,A02B\n")
    code, out, err = run_cli(["prepare", "--source", "mimic3", "--root", "demo", "--out",
                              str(tmp_path / "d"), "--ddi", str(pairs)], monkeypatch, capsys)
    assert code in (0, None), err
    from leader.data.dataset import Dataset

    ds = Dataset.load(tmp_path / "d")
    assert ds.ddi_pairs == [("A02B", "N02B"), ("B01A", "N02B")]  # Z99Z is not in the vocab
    assert ds.ddi_source == "user file pairs.csv" and ds.manifest["ddi"]["pairs_in_file"] == 3


def test_unmappable_drug_is_a_counted_drop(tmp_path, monkeypatch, capsys):
    """A code that maps to nothing is not an error: the row is dropped and counted."""
    from leader.data.cohort import prepare

    base = prepare("mimic3", "demo", tmp_path / "base")
    raw = raw_copy(tmp_path)
    # row 2 maps by NDC (00536338101 → A06A); give it codes no route knows
    edit_line(raw / "PRESCRIPTIONS.csv", 2,
              lambda line: line.replace("002947,00536338101", "999999,99999999999")
              .replace("Bisacodyl,Bisacodyl,Bisacodyl", "Nodrug,Nodrug,Nodrug"))
    m = prepare("mimic3", raw, tmp_path / "edited")
    assert m["mapping"]["unmapped"] == base["mapping"]["unmapped"] + 1
    assert m["mapping"]["ndc"] == base["mapping"]["ndc"] - 1
    assert m["drops"]["prescription_rows_unmapped"] == m["mapping"]["unmapped"]
    # an ICD code missing from D_ICD_*: kept, titled by its code, counted
    edit_line(raw / "DIAGNOSES_ICD.csv", 1, lambda line: set_field(line, 4, "V9999"))
    m = prepare("mimic3", raw, tmp_path / "edited2")
    assert m["titles_missing"]["diagnoses"] == base["titles_missing"]["diagnoses"] + 1


def test_existing_output_not_overwritten_without_force(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["prepare", "--source", "mimic3", "--root", "demo", "--out", str(out)]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code in (0, None), err
    before = sha256_file(out / "manifest.json")
    code, _, err = run_cli([*args, "--seed", "1"], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and str(out) in err
    assert sha256_file(out / "manifest.json") == before
    code, _, err = run_cli([*args, "--seed", "1", "--force"], monkeypatch, capsys)
    assert code in (0, None), err
    assert sha256_file(out / "manifest.json") != before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old dirs left


@pytest.mark.slow
def test_installed_cli_prints_one_line_no_traceback(tmp_path):
    leader = Path(sys.executable).with_name("leader")
    raw = raw_copy(tmp_path)
    edit_line(raw / "DIAGNOSES_ICD.csv", 3, lambda line: set_field(line, 2, "abc"))
    proc = subprocess.run(
        [str(leader), "prepare", "--source", "mimic3", "--root", str(raw), "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "DIAGNOSES_ICD.csv row 3: column hadm_id" in proc.stderr

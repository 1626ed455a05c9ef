"""One suite for every registered source: cohort rules, split, manifest, and bad input
(missing table or column, wrong types, duplicated columns, corrupt gzip, malformed CSV),
each refused with a one-line error naming the file; unmapped codes are counted, not errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from source_cases import CASES, CSV_SOURCES, Case, edit_lines, header, meds_files, read_text

from leader.data import sources
from leader.data.cohort import PrepareConfig, prepare
from leader.data.dataset import SPLITS, Dataset
from leader.errors import LeaderError


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Each source's raw data, made once; tests copy it before spoiling it."""
    return {name: case.make(tmp_path_factory.mktemp(name)) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def prepared(bases, tmp_path_factory) -> dict[str, tuple[dict, Dataset]]:
    out = {}
    for name, case in CASES.items():
        where = tmp_path_factory.mktemp(f"data-{name}") / "data"
        manifest = prepare(name, bases[name], where, PrepareConfig.for_source(name, **case.config))
        out[name] = (manifest, Dataset.load(where))
    return out


def fresh(bases, case: Case, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(bases[case.source], raw)
    return raw


def refuse(case: Case, raw: Path, tmp_path: Path, *expected: str, **options) -> str:
    """prepare through the CLI: exit 2, one line, no traceback, nothing written."""
    from leader.cli import main

    out = tmp_path / "out"
    args = ["leader", "prepare", "--source", case.source, "--root", str(raw), "--out", str(out)]
    for key, value in options.items():
        args += ["--source-option", f"{key}={value}"]
    pytest.MonkeyPatch().setattr(sys, "argv", args)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main()
    text = err.getvalue()
    lines = text.strip().splitlines()
    assert exit_info.value.code == 2, text
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    for piece in expected:
        assert piece in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


ALL = list(CASES)


# --------------------------------------------------------------------------------- registry


def test_registry_lists_every_source():
    assert sources.names() == ("mimic3", "mimic4", "omop", "meds")
    for name in sources.names():
        source = sources.get(name)
        assert source.name == name and source.profile_fields[:2] == ("gender", "age")
    assert sources.distill_weights("mimic3") == (0.4, 0.005)
    assert sources.distill_weights("mimic4") == (0.8, 0.01)
    assert sources.distill_weights("omop") is None and sources.distill_weights("x") is None
    assert sources.synth_formats() == ("mimic3", "mimic4", "omop")
    with pytest.raises(LeaderError, match="expected one of mimic3, mimic4, omop, meds"):
        sources.get("fhir")


def test_prepare_help_lists_the_sources():
    from typer.testing import CliRunner

    from leader.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for name in sources.names():
        assert name in result.output


# ------------------------------------------------------------------------------ cohort rules


@pytest.mark.parametrize("name", ALL)
def test_cohort_rules_split_and_manifest(prepared, bases, name):
    m, ds = prepared[name]
    v = ds.visits
    assert m["source"] == name and m["profile_fields"] == ds.profile_fields
    assert m["stats"]["visits"] == v.height > 50
    assert m["stats"]["patients"] == v["patient_id"].n_unique()
    for kind in ("diagnoses", "procedures", "drugs"):
        assert (v[kind].list.len() > 0).all()  # a visit needs all three kinds
        assert set(ds.vocab[kind].codes) == set(v[kind].explode().to_list())
    # one split per patient, all three present, shares near 0.8/0.1/0.1
    per = v.group_by("patient_id").agg(pl.col("split").n_unique())
    assert (per["split"] == 1).all() and set(v["split"]) == set(SPLITS)
    # visits ordered by admission time within a patient
    ordered = v.sort("patient_id", "visit_index")
    assert (ordered.group_by("patient_id", maintain_order=True)
            .agg(pl.col("admittime").is_sorted())["admittime"]).all()
    # every input file hashed, labelled relative to the root
    assert m["inputs"] and all((bases[name] / label).is_file() for label in m["inputs"])
    assert set(m["mapping"]) >= {"prescription_rows", "ndc", "gsn", "name", "unmapped",
                                 "no_ndc"}
    assert m["drops"]["prescription_rows_unmapped"] == m["mapping"]["unmapped"]


@pytest.mark.parametrize("name", ALL)
def test_cohort_options_apply(bases, tmp_path, name):
    case = CASES[name]
    config = PrepareConfig.for_source(name, **{**case.config, "min_visits": 2, "top_drugs": 5,
                                               "seed": 7})
    m = prepare(name, bases[name], tmp_path / "o", config)
    v = Dataset.load(tmp_path / "o").visits
    assert (v.group_by("patient_id").len()["len"] >= 2).all()
    assert m["stats"]["n_drugs"] <= 5 and m["config"]["seed"] == 7


@pytest.mark.parametrize("name", ALL)
def test_unmapped_drug_is_a_counted_drop(bases, prepared, tmp_path, name):
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    route = case.drug_edit(raw)
    m = prepare(name, raw, tmp_path / "o", PrepareConfig.for_source(name, **case.config))
    base = prepared[name][0]["mapping"]
    assert m["mapping"]["unmapped"] == base["unmapped"] + 1
    assert m["mapping"][route] == base[route] - 1
    assert m["mapping"]["prescription_rows"] == base["prescription_rows"]


def test_omop_and_mimic4_agree_on_the_same_draw(prepared):
    """`synth --format omop` re-shapes the mimic4 draw of the same seed: same cohort."""
    a, b = prepared["mimic4"][1].visits, prepared["omop"][1].visits
    common = ["patient_id", "hadm_id", "visit_index", "admittime", "diagnoses", "procedures",
              "drugs", "gender", "age", "race", "admission_type", "split"]
    assert a.height > 50 and a.select(common).equals(b.select(common))
    assert prepared["omop"][0]["mapping"]["vocabulary"] > 0


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", ALL)
def test_missing_root(name, tmp_path):
    refuse(CASES[name], tmp_path / "nowhere", tmp_path, "nowhere", "directory not found")


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_missing_table(bases, tmp_path, name):
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    (raw / case.tables["prescriptions"]).unlink()
    stem = Path(case.tables["prescriptions"]).name.split(".")[0]
    refuse(case, raw, tmp_path, stem, "file not found")


def test_meds_missing_data(bases, tmp_path):
    raw = fresh(bases, CASES["meds"], tmp_path)
    shutil.rmtree(raw / "data")
    refuse(CASES["meds"], raw, tmp_path, "data", "no Parquet files found")


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_missing_column(bases, tmp_path, name):
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    path, column = raw / case.tables["prescriptions"], case.columns["prescriptions"]
    edit_lines(path, lambda lines: [lines[0].replace(column, column + "_x"), *lines[1:]])
    refuse(case, raw, tmp_path, case.tables["prescriptions"], f"missing column {column.lower()}")


@pytest.mark.parametrize("name", CSV_SOURCES)
@pytest.mark.parametrize("variant", ["other_case", "same_name"])
def test_duplicated_column_is_refused(bases, tmp_path, name, variant):
    """`dob` next to `DOB`, or `icd9_code,...,icd9_code`: which one to read would be a guess."""
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    path, column = raw / case.tables["diagnoses"], case.columns["diagnoses"]
    names = header(path)
    actual = next(n for n in names if n.strip('"').lower() == column.lower())
    twin = actual.swapcase() if variant == "other_case" else actual
    last = names[-1]

    def rename_last(lines):
        head = lines[0].rstrip("\n")
        return [head[: len(head) - len(last)] + twin + "\n", *lines[1:]]

    edit_lines(path, rename_last)
    refuse(case, raw, tmp_path, case.tables["diagnoses"], "duplicated column",
           twin.strip('"'))


def test_meds_duplicated_column_is_refused(bases, tmp_path):
    raw = fresh(bases, CASES["meds"], tmp_path)
    path = meds_files(raw)[0]
    table = pq.read_table(path)
    dup = pa.Table.from_arrays([*table.columns, table.column("code")],
                               names=[*table.column_names, "CODE"])
    pq.write_table(dup, path)
    refuse(CASES["meds"], raw, tmp_path, path.name, "duplicated column", "CODE")


@pytest.mark.parametrize("name", CSV_SOURCES)
@pytest.mark.parametrize("damage", ["truncated", "bad_crc"])
def test_corrupt_gzip(bases, tmp_path, name, damage):
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    path = raw / case.tables["prescriptions"]
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-6] ^= 0xFF  # inside the CRC-32 trailer
    path.write_bytes(bytes(data))
    refuse(case, raw, tmp_path, case.tables["prescriptions"], "corrupt or truncated gzip")


def test_corrupt_parquet(bases, tmp_path):
    raw = fresh(bases, CASES["meds"], tmp_path)
    path = meds_files(raw)[-1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refuse(CASES["meds"], raw, tmp_path, path.name, "not a readable Parquet file")


@pytest.mark.parametrize("name", CSV_SOURCES)
@pytest.mark.parametrize("damage", ["quote_inside_field", "unclosed_quote"])
def test_malformed_csv_names_file_and_row(bases, tmp_path, name, damage):
    """polars' "CSV malformed … chunk" / "could not parse" become the file and the row."""
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    path = raw / case.tables["diagnoses"]
    row = 7

    def spoil(lines):
        fields = lines[row].split(",")
        fields[-1] = ('4"01' if damage == "quote_inside_field" else '"401') + "\n"
        lines[row] = ",".join(fields)
        return lines

    edit_lines(path, spoil)
    line = refuse(case, raw, tmp_path, f"{case.tables['diagnoses']} row {row}",
                  "cannot parse as CSV")
    # an opened quote swallows the line end; the next quote closes it, and text follows it
    # (quoted CSVs), or no quote ever closes it (unquoted ones)
    reasons = (["quote inside"] if damage == "quote_inside_field"
               else ["never closed", "text after a closing quote"])
    assert any(r in line for r in reasons), line


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_wrong_type_id(bases, tmp_path, name):
    case = CASES[name]
    raw = fresh(bases, case, tmp_path)
    from source_cases import set_csv_field

    set_csv_field(raw / case.tables["diagnoses"], 3, case.columns["diagnoses"], "12x45")
    refuse(case, raw, tmp_path, f"{case.tables['diagnoses']} row 3",
           f"column {case.columns['diagnoses'].lower()}", "got '12x45'")


def test_meds_wrong_type(bases, tmp_path):
    raw = fresh(bases, CASES["meds"], tmp_path)
    path = meds_files(raw)[0]
    table = pq.read_table(path)
    index = table.schema.get_field_index("subject_id")
    table = table.set_column(index, "subject_id", table.column("subject_id").cast(pa.string()))
    pq.write_table(table, path)
    refuse(CASES["meds"], raw, tmp_path, path.name, "column subject_id: expected int64",
           "got string")


def test_meds_missing_column(bases, tmp_path):
    raw = fresh(bases, CASES["meds"], tmp_path)
    path = meds_files(raw)[0]
    pq.write_table(pq.read_table(path).drop(["code"]), path)
    refuse(CASES["meds"], raw, tmp_path, path.name, "missing column code")


@pytest.mark.parametrize("name", ALL)
def test_unknown_source_option(name, bases, tmp_path):
    refuse(CASES[name], bases[name], tmp_path, "source option", "colour", colour="red")


def test_split_from_data_needs_a_source_split(bases, tmp_path):
    with pytest.raises(LeaderError, match="has no split of its own"):
        prepare("mimic4", bases["mimic4"], tmp_path / "o",
                PrepareConfig.for_source("mimic4", split_from_data=True))
    assert not (tmp_path / "o").exists()


def test_plain_csv_error_is_located_too(tmp_path):
    """The bundled demo is plain CSV: a stray quote is found in it as well."""
    from leader.data.sources.mimic3 import demo_root

    raw = tmp_path / "raw"
    shutil.copytree(demo_root(), raw)
    path = raw / "PRESCRIPTIONS.csv"
    lines = read_text(path).splitlines(keepends=True)
    lines[5] = lines[5].replace(",", ',"', 1)
    path.write_text("".join(lines))
    refuse(CASES["mimic3"], raw, tmp_path, "PRESCRIPTIONS.csv row 5", "cannot parse as CSV")

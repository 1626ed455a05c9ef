"""`leader compare`: the report files, the same draws for every model, a self-contained HTML."""

import json
import re

import pytest
from typer.testing import CliRunner

from leader.bundle import save_bundle
from leader.errors import LeaderError
from leader.evaluation import evaluate
from leader.models.base import model_class
from leader.report import compare


@pytest.fixture(scope="module")
def model_dirs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [
        save_bundle(model_class(n)(tiny_data.schema).fit(tiny_data), root / n)
        for n in ("popular", "repeat-last", "logreg")
    ]


def test_report_files(model_dirs, tiny_data, tmp_path):
    out = tmp_path / "report"
    table = compare(tiny_data, model_dirs, out, rounds=4, seed=2)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {"table.md", "table.json", "report.html", "manifest.json",
                "figures/ddi_vs_jaccard.png", "figures/groups.png",
                *(f"figures/metric_{m}.png" for m in ("jaccard", "prauc", "f1", "ddi_rate",
                                                      "avg_meds")),
                *(f"evals/{d.name}.json" for d in model_dirs)}
    assert expected <= files
    assert [r["model"] for r in table["rows"]] == ["popular", "repeat-last", "logreg"]
    md = (out / "table.md").read_text()
    assert "| logreg |" in md and "Protocol:" in md and "±" in md
    # the same numbers as evaluating each model alone with the same options
    alone = evaluate(model_dirs[2], tiny_data, rounds=4, seed=2)
    saved = json.loads((out / "table.json").read_text())["rows"][2]
    assert saved["jaccard"] == alone["metrics"]["jaccard"]
    assert saved["parameters"] > 0 and saved["inference_ms_per_visit"] > 0


def test_html_is_self_contained(model_dirs, tiny_data, tmp_path):
    out = tmp_path / "report"
    compare(tiny_data, model_dirs[:2], out, rounds=3)
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 8  # 7 metric figures + reliability
    # nothing fetched from elsewhere: no external src/href
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<table>" in page and "repeat-last" in page


def test_refuses_overwrite_and_bad_model(model_dirs, tiny_data, tmp_path):
    out = tmp_path / "report"
    compare(tiny_data, model_dirs[:1], out, rounds=2)
    with pytest.raises(LeaderError, match="--force"):
        compare(tiny_data, model_dirs[:1], out, rounds=2)
    with pytest.raises(LeaderError, match="directory not found"):
        compare(tiny_data, [tmp_path / "missing"], tmp_path / "r2", rounds=2)
    assert not (tmp_path / "r2").exists()


def test_cli_prints_table(model_dirs, tiny_data_dir, tmp_path):
    import leader.cli

    leader.cli._register()
    res = CliRunner().invoke(leader.cli.app, ["compare", "--data", str(tiny_data_dir),
                                              *map(str, model_dirs[:2]), "--out",
                                              str(tmp_path / "r"), "--rounds", "2"])
    assert res.exit_code == 0, res.output
    assert "| popular |" in res.output and (tmp_path / "r" / "report.html").is_file()


def test_paired_differences_and_small_split_warning(tiny_data_dir, tmp_path):
    """Paired differences against a reference on the same draws, and the ranking warning."""
    from leader.bundle import save_bundle
    from leader.data.dataset import Dataset
    from leader.evaluation import decide_threshold
    from leader.models.baselines.popular import Popular, RepeatLast
    from leader.report import compare

    data = Dataset.load(tiny_data_dir)
    dirs = []
    for cls in (Popular, RepeatLast):
        model = cls(data.schema).fit(data)
        dirs.append(save_bundle(model, tmp_path / cls.name, rule=decide_threshold(model, data)))
    table = compare(data, dirs, tmp_path / "report", reference="popular", threshold=0.3)
    paired = table["paired"]["repeat-last"]
    rows = {r["model"]: r for r in table["rows"]}
    # the mean paired difference is the difference of the means (same draws)
    for m in ("jaccard", "prauc"):
        want = rows["repeat-last"][m]["mean"] - rows["popular"][m]["mean"]
        assert paired["all"][m]["mean"] == pytest.approx(want, abs=1e-9)
        lo, hi = paired["all"][m]["ci95"]
        assert lo <= paired["all"][m]["mean"] <= hi
    # on first visits repeat-last IS popular: every paired difference is exactly 0
    assert paired["first_visit"]["jaccard"] == {"mean": 0.0, "std": 0.0, "ci95": [0.0, 0.0]}
    text = (tmp_path / "report" / "table.md").read_text()
    assert "Paired differences against `popular`" in text
    assert "too few to rank models" in text and table["warnings"]
    own = compare(data, dirs, tmp_path / "own")  # each bundle's own rule, stated
    assert "tuned on the val split" in own["protocol_line"]
    with pytest.raises(LeaderError, match="reference 'nope'"):
        compare(data, dirs, tmp_path / "r2", reference="nope")

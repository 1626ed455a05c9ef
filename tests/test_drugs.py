"""Prescription → ATC3 mapping routes, ATC3 names, DDI pairs and the pooled DDI rate."""

from __future__ import annotations

import polars as pl
import pytest

from leader.data import ddi, drugs
from leader.data.dataset import Vocab
from leader.errors import LeaderError


def _map(rows: list[dict], drop_ndc_zero: bool = True) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={"ndc": pl.String, "gsn": pl.String, "drug": pl.String})
    return drugs.map_prescriptions(frame.lazy(), drop_ndc_zero).collect()


def test_routes_in_order_ndc_gsn_name():
    out = _map(
        [
            # NDC from the NDC→ATC3 table wins over a GSN and a name that map elsewhere
            {"ndc": "00002475977", "gsn": "002947", "drug": "Furosemide"},
            # NDC missing from every table → the first GSN that maps (several, space-separated)
            {"ndc": "99999999999", "gsn": "999999 002947 021413", "drug": "x"},
            # neither NDC nor GSN → the drug name, case-insensitively
            {"ndc": "99999999999", "gsn": None, "drug": "  FUROSEMIDE "},
            {"ndc": "99999999999", "gsn": "999999", "drug": "no such drug"},
            {"ndc": "0", "gsn": "002947", "drug": "Furosemide"},
            {"ndc": None, "gsn": "002947", "drug": "Furosemide"},
        ]
    )
    assert out["route"].to_list() == ["ndc", "gsn", "name", "unmapped", "no_ndc", "no_ndc"]
    assert out["atc3"].to_list() == ["B01A", "A06A", "C03C", None, None, None]
    assert drugs.route_counts(out) == {
        "ndc": 1, "gsn": 1, "name": 1, "unmapped": 1, "no_ndc": 2
    }


def test_keep_ndc_zero_falls_back_to_gsn_and_name():
    out = _map(
        [{"ndc": "0", "gsn": "002947", "drug": "x"}, {"ndc": None, "gsn": None, "drug": "Heparin"}],
        drop_ndc_zero=False,
    )
    assert out["route"].to_list() == ["gsn", "name"]
    assert out["atc3"].to_list() == ["A06A", "B01A"]


def test_ndc_keeps_leading_zeros_and_repairs_lost_ones():
    expr = drugs.ndc_expr(pl.col("ndc"))
    frame = pl.DataFrame({"ndc": ["00002202402", "2202402", "0", "00000000000", "abc", None]})
    assert frame.select(expr)["ndc"].to_list() == [
        "00002202402", "00002202402", None, None, None, None
    ]
    # the GSN table's NDC column lost leading zeros; the map restores them
    assert drugs.ndc_map()["ndc"].str.len_chars().unique().to_list() == [11]


def test_atc3_names_are_lower_case_level3():
    names = drugs.atc3_names()
    assert names["N02B"] == "other analgesics and antipyretics"
    assert all(len(code) == 4 for code in names)
    assert all(name == name.lower() for name in names.values())


def test_one_class_per_key():
    tables = ((drugs.ndc_map(), "ndc"), (drugs.gsn_map(), "gsn"), (drugs.name_map(), "name"))
    for table, key in tables:
        assert table[key].is_unique().all()
        assert table["atc3"].str.len_chars().unique().to_list() == [4]


def test_bundled_pairs_symmetric_sorted_unique():
    pairs, source = ddi.load_pairs()
    assert len(pairs) == 448 and "TWOSIDES" in source
    assert all(a < b for a, b in pairs) and len(set(pairs)) == len(pairs)


def test_user_pairs_with_or_without_header(tmp_path):
    with_header = tmp_path / "h.csv"
    with_header.write_text("drug_a,drug_b\nn02b,A01A\nA01A,N02B\nB01A,B01A\n")
    no_header = tmp_path / "n.csv"
    no_header.write_text("N02B,A01A\n")
    assert ddi.load_pairs(with_header)[0] == [("A01A", "N02B")]
    assert ddi.load_pairs(no_header)[0] == [("A01A", "N02B")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a,b\nN02B,A01A\nN02B,aspirin\n", "row 3: expected an ATC level-3 code"),
        ("N02B,A01A,C03C\n", "3 columns, expected 2"),
        ("", "empty file"),
    ],
)
def test_bad_pairs_file(tmp_path, text, expected):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(LeaderError, match=expected) as err:
        ddi.load_pairs(path)
    assert "pairs.csv" in str(err.value)


def test_ddi_rate_pooled_over_visits():
    vocab = Vocab(["A01A", "B01A", "C03C", "N02B"], ["a", "b", "c", "n"])
    pairs = [("A01A", "B01A"), ("C03C", "N02B")]
    visits = pl.Series([["A01A", "B01A", "C03C"], ["C03C", "N02B"], ["A01A"], []])
    # visit 1: 3 pairs, 1 interacting; visit 2: 1 pair, 1 interacting → pooled 2/4, not mean(1/3, 1)
    assert ddi.ddi_rate(visits, pairs, vocab) == pytest.approx(0.5)
    assert ddi.ddi_rate(visits, pairs, vocab, chunk=1) == pytest.approx(0.5)
    assert ddi.ddi_rate(pl.Series([["A01A"]]), pairs, vocab) == 0.0
    assert ddi.restrict_pairs(pairs + [("A01A", "Z99Z")], vocab.codes) == pairs

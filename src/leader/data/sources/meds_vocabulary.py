"""The MEDS code vocabulary: which MEDS ``code`` strings are diagnoses, procedures, drugs,
admissions, profile values or the birth, and how to read the value out of them.

Why a mapping file and not code: every MEDS converter spells codes its own way (meds_etl writes
``ICD10CM/I50.9``, MEDS-Transforms pipelines ``DIAGNOSIS//ICD//10//I509``). A vocabulary is JSON:

    {"visit_id_columns": ["visit_id"],          # first one present in the data is used
     "order_column": "seq_num",                 # optional: order of codes within a visit
     "profile_fields": ["gender", "age", ...],  # order models see them
     "rules": [{"prefix": "ICD10CM/", "kind": "diagnosis", "icd_version": 10}, ...]}

A rule matches by ``prefix`` (the value is the rest of the code) or by exact ``code``; an
optional ``separator`` keeps only the value's first part. Kinds: ``diagnosis`` / ``procedure``
(with ``icd_version`` 9 or 10; dotted or undotted codes), ``drug`` (``route``: ``ndc``,
``name``, ``atc`` or ``code``: an RxNorm or other code that reaches ATC only through
``metadata/codes.parquet`` parent codes), ``admission`` (starts a visit; its value is the
``field``), ``profile`` (a ``field``; ``level`` ``visit`` or ``subject``) and ``birth``.
The first matching rule wins. Built-in presets: ``meds_etl`` and ``meds_transforms``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from leader.errors import LeaderError

PRESETS_DIR = Path(__file__).parent.parent / "resources" / "meds"
PRESETS = ("meds_etl", "meds_transforms")
KINDS = ("diagnosis", "procedure", "drug", "admission", "profile", "birth")
DRUG_ROUTES = ("ndc", "name", "atc", "code")
LEVELS = ("visit", "subject")


@dataclass(frozen=True)
class Rule:
    kind: str
    prefix: str | None = None
    code: str | None = None
    icd_version: int | None = None
    route: str | None = None
    field: str | None = None
    level: str = "visit"
    separator: str | None = None

    def matches(self, code: pl.Expr) -> pl.Expr:
        return code.str.starts_with(self.prefix) if self.prefix is not None else code == self.code


@dataclass(frozen=True)
class Vocabulary:
    name: str
    visit_id_columns: tuple[str, ...]
    profile_fields: tuple[str, ...]
    rules: tuple[Rule, ...]
    order_column: str | None = None

    def fields(self, level: str) -> list[str]:
        """Profile fields read at ``level`` (admission types are visit-level)."""
        return list(dict.fromkeys(
            r.field for r in self.rules
            if r.kind in ("profile", "admission") and r.field and r.level == level))

    def matches_kind(self, code: pl.Expr, kinds: tuple[str, ...]) -> pl.Expr:
        """A cheap pre-filter: the code matches some rule of ``kinds`` (``classify`` decides)."""
        tests = [r.matches(code) for r in self.rules if r.kind in kinds]
        return pl.any_horizontal(tests) if tests else pl.lit(False)

    def classify(self, code: pl.Expr) -> list[pl.Expr]:
        """``_kind``, ``_value``, ``_version``, ``_route``, ``_field``, ``_level`` per code.

        One pass of prefix tests finds the first matching rule; the rest are lookups by its
        index (a code is scanned once per rule, not once per rule and output column).
        """
        chain = None
        for i, rule in enumerate(self.rules):
            test = rule.matches(code)
            chain = pl.when(test).then(i) if chain is None else chain.when(test).then(i)
        index = chain.otherwise(None).cast(pl.Int16)

        def lookup(values: list[object], dtype) -> pl.Expr:
            table = dict(enumerate(values))
            return index.replace_strict(table, default=None, return_dtype=dtype)

        r = self.rules
        skip = lookup([len(x.prefix) if x.prefix is not None else None for x in r], pl.Int64)
        value = code.str.slice(skip)
        split = [i for i, x in enumerate(r) if x.separator]
        for i in split:
            value = pl.when(index == i).then(
                value.str.split(r[i].separator).list.first()).otherwise(value)
        return [
            lookup([x.kind for x in r], pl.String).alias("_kind"),
            value.alias("_value"),
            lookup([x.icd_version for x in r], pl.Int64).alias("_version"),
            lookup([x.route for x in r], pl.String).alias("_route"),
            lookup([x.field for x in r], pl.String).alias("_field"),
            lookup([x.level for x in r], pl.String).alias("_level"),
        ]


def _rule(raw: object, where: str, index: int) -> Rule:
    label = f"{where} rule {index + 1}"
    if not isinstance(raw, dict):
        raise LeaderError(f"{label}: expected an object with prefix or code, and kind")
    known = set(Rule.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LeaderError(f"{label}: unknown key {unknown[0]!r} (expected {', '.join(known)})")
    rule = Rule(**raw)
    if (rule.prefix is None) == (rule.code is None):
        raise LeaderError(f"{label}: expected exactly one of prefix or code")
    if rule.kind not in KINDS:
        raise LeaderError(f"{label}: kind {rule.kind!r}: expected one of {', '.join(KINDS)}")
    if rule.kind in ("diagnosis", "procedure") and rule.icd_version not in (9, 10):
        raise LeaderError(f"{label}: icd_version {rule.icd_version!r}: expected 9 or 10")
    if rule.kind == "drug" and rule.route not in DRUG_ROUTES:
        raise LeaderError(f"{label}: route {rule.route!r}: expected one of "
                          f"{', '.join(DRUG_ROUTES)}")
    if rule.kind in ("admission", "profile") and not rule.field:
        raise LeaderError(f"{label}: expected a field name")
    if rule.level not in LEVELS:
        raise LeaderError(f"{label}: level {rule.level!r}: expected visit or subject")
    return rule


def load(spec: str) -> Vocabulary:
    """A preset name or the path of a vocabulary JSON file."""
    path = PRESETS_DIR / f"{spec}.json" if spec in PRESETS else Path(spec)
    if not path.is_file():
        raise LeaderError(f"{spec}: MEDS vocabulary not found (expected a preset, "
                          f"{' or '.join(PRESETS)}, or a JSON file)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeaderError(f"{path}: not a readable JSON vocabulary ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("rules"), list) or not raw["rules"]:
        raise LeaderError(f"{path}: expected an object with a non-empty list 'rules'")
    rules = tuple(_rule(r, str(path.name), i) for i, r in enumerate(raw["rules"]))
    if not any(r.kind == "admission" for r in rules):
        raise LeaderError(f"{path}: expected a rule of kind 'admission' (visits start there)")
    fields = raw.get("profile_fields") or ["gender", "age"] + [
        r.field for r in rules if r.kind in ("profile", "admission") and r.field != "gender"]
    return Vocabulary(
        name=spec, visit_id_columns=tuple(raw.get("visit_id_columns", ["visit_id", "hadm_id"])),
        profile_fields=tuple(dict.fromkeys(fields)), rules=rules,
        order_column=raw.get("order_column"),
    )

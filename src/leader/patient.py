"""The patient a caller gives us: a strict JSON schema, its limits, and its mapping to a Sample.

A patient is ``{"profile": {field: value}, "visits": [{"diagnoses": [...], "procedures": [...],
"drugs": [...], "icd_version": 9|10}, ...]}``, oldest visit first; the last visit is the one to
recommend for (its drugs are ignored). Types are strict (no "9" for 9, no number for a code) and
unknown fields are refused, so a typo fails loudly instead of silently dropping information.

Codes are canonicalised the way ``prepare`` writes them:

- ICD codes (diagnoses, procedures) may carry their version, ``icd10:I10``, else they take the
  visit's ``icd_version``, else the default: the version most of the model's vocabulary uses.
  Dots are dropped (``401.9`` == ``4019``).
- Drugs of earlier visits are ATC codes (``N02B``; longer ATC codes are cut to level 3) or NDCs
  (11 digits, dashes allowed, ``ndc:`` prefix optional), mapped to ATC3 with the same bundled
  tables as ``prepare`` (:func:`leader.data.drugs.ndc_map`).

Codes the model does not know are ignored and reported as warnings, never fatal: a clinician's
patient is not wrong because the training cohort never saw one of its codes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from leader.data.dataset import Schema
from leader.data.drugs import ndc_map
from leader.data.samples import Sample, Visit
from leader.data.vocab import CODE_KINDS, UNKNOWN, icd_key
from leader.errors import LeaderError

ICD_PREFIX = re.compile(r"^icd(9|10):", re.IGNORECASE)
ATC_CODE = re.compile(r"^[A-Z]\d\d[A-Z]")
NDC_CODE = re.compile(r"^\d[\d-]{0,12}$")
MAX_ERRORS_SHOWN = 5
MAX_AGE = 150
# pydantic names the branch of a union that failed (``x.constrained-str``); not a field path
UNION_BRANCH = re.compile(r"^(constrained-|function-)|\[|^(str|int|float|bool|none)$")


@dataclass(frozen=True)
class Limits:
    """Bounds on one patient; they keep a hostile or broken request from costing real work."""

    max_visits: int = 100
    max_codes_per_visit: int = 1000
    max_code_length: int = 32
    max_profile_fields: int = 64
    max_profile_value_length: int = 128


DEFAULT_LIMITS = Limits()


@cache
def patient_model(limits: Limits = DEFAULT_LIMITS) -> type[BaseModel]:
    """The pydantic model of a patient under ``limits`` (one class per distinct limits)."""
    strict = ConfigDict(extra="forbid", strict=True)
    code = Annotated[str, Field(min_length=1, max_length=limits.max_code_length)]
    codes = Annotated[
        list[code],
        Field(default_factory=list, max_length=limits.max_codes_per_visit),
    ]
    visit = create_model(
        "VisitIn",
        __config__=strict,
        __doc__="One hospital visit. Codes per kind; per-code ICD version prefix allowed.",
        diagnoses=(codes, Field(description="ICD-9-CM / ICD-10-CM codes, e.g. 401.9, icd10:I10")),
        procedures=(codes, Field(description="ICD-9 procedure / ICD-10-PCS codes")),
        drugs=(
            codes,
            Field(description="Earlier visits only: ATC codes (N02B) or 11-digit NDCs"),
        ),
        icd_version=(
            Literal[9, 10] | None,
            Field(None, description="ICD version of this visit's bare codes"),
        ),
    )
    value = _profile_value(limits.max_profile_value_length)
    age = _age_value()
    profile = type(
        "Profile",
        (BaseModel,),
        {
            "__doc__": "Profile fields, e.g. gender, age (years, a whole number), insurance.",
            "__annotations__": {"__pydantic_extra__": dict[str, value], "age": age},
            "model_config": ConfigDict(
                extra="allow",
                strict=True,
                json_schema_extra={"maxProperties": limits.max_profile_fields},
            ),
            "age": Field(None, description="Age in years: a JSON integer, 0 to 150"),
            "limit_fields": model_validator(mode="before")(_at_most(limits.max_profile_fields)),
        },
    )
    return create_model(
        "Patient",
        __config__=strict,
        __doc__="A patient: profile and visits, oldest first; the last visit is recommended for.",
        id=(
            Annotated[str, Field(max_length=128)] | None,
            Field(None, description="Caller's identifier, echoed back; never used by the model"),
        ),
        profile=(
            # validated as a model (so ``age`` has its own type), kept as the plain dict given
            Annotated[profile, AfterValidator(lambda m: m.model_dump(exclude_unset=True)),
                      PlainSerializer(dict, return_type=dict)],
            Field(default_factory=dict, description="Profile fields; unknown ones are ignored"),
        ),
        visits=(
            Annotated[list[visit], Field(min_length=1, max_length=limits.max_visits)],
            Field(description="Visits, oldest first; at least one"),
        ),
    )


def _at_most(n: int) -> Any:
    def check(cls: type, v: Any) -> Any:
        if isinstance(v, dict) and len(v) > n:
            raise PydanticCustomError("too_many_fields", f"too many fields (at most {n})")
        return v

    return classmethod(check)


def _whole(v: Any) -> int | None:
    """A JSON integer (``64``, or ``64.0``: JSON Schema counts it as one), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _age_value() -> Any:
    def check(v: Any) -> int | None:
        if v is None:
            return None
        years = _whole(v)
        if years is None or not 0 <= years <= MAX_AGE:
            raise PydanticCustomError(
                "age", f"expected years as a JSON whole number between 0 and {MAX_AGE}"
            )
        return years

    schema = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_AGE}, {"type": "null"}]}
    return Annotated[int | None, PlainValidator(check), WithJsonSchema(schema)]


def _profile_value(max_length: int) -> Any:
    """A profile value: a short string, a whole number 0-150 or null, with one clear message
    (a plain union reports each branch under a made-up path such as ``constrained-str``)."""
    expected = f"expected a string (at most {max_length} characters), a whole number or null"

    def check(v: Any) -> Any:
        if v is None or (isinstance(v, str) and len(v) <= max_length):
            return v
        number = _whole(v)
        if number is not None and 0 <= number <= MAX_AGE:
            return number
        raise PydanticCustomError("profile_value", expected)

    schema = {
        "anyOf": [
            {"type": "string", "maxLength": max_length},
            {"type": "integer", "minimum": 0, "maximum": MAX_AGE},
            {"type": "null"},
        ]
    }
    return Annotated[str | int | None, PlainValidator(check), WithJsonSchema(schema)]


Patient = patient_model()


def patient_json_schema(limits: Limits = DEFAULT_LIMITS) -> dict:
    """JSON Schema of the patient input (for docs and the OpenAPI description)."""
    return patient_model(limits).model_json_schema()


def describe_validation_error(err: ValidationError, where: str = "patient") -> str:
    """One readable line per problem, naming the field path; the input value is not echoed."""
    by_path: dict[str, list[str]] = {}
    for e in err.errors():
        loc = [p for p in e["loc"] if isinstance(p, int) or not UNION_BRANCH.search(str(p))]
        path = where + "".join(_path_part(p) for p in loc)
        messages = by_path.setdefault(path, [])
        if _message(e) not in messages:
            messages.append(_message(e))
    parts = [f"{path}: {' or '.join(m)}" for path, m in list(by_path.items())[:MAX_ERRORS_SHOWN]]
    more = len(by_path) - MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"... and {more} more problems")
    return "; ".join(parts)


def _path_part(part: str | int) -> str:
    """``.name`` or ``[3]``; a key the caller chose is quoted when it is not a plain word, so
    a newline or a bracket in it cannot break the one-line message or fake a path."""
    if isinstance(part, int):
        return f"[{part}]"
    text = str(part)
    if text and len(text) <= 40 and re.fullmatch(r"[\w-]+", text, re.ASCII):
        return f".{text}"
    return f"[{text[:40]!r}]"


def _message(e: dict) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "too_big" and e["loc"] and e["loc"][-1] == "age":
        return f"expected years between 0 and {MAX_AGE}"
    if kind == "extra_forbidden":
        return (
            "unknown field (allowed: profile, visits, id; in a visit: diagnoses, "
            "procedures, drugs, icd_version)"
        )
    if kind == "too_long" and "max_length" in ctx:
        return f"too many items (at most {ctx['max_length']})"
    if kind == "string_too_long":
        return f"too long (at most {ctx.get('max_length')} characters)"
    if kind == "too_short" and "min_length" in ctx:
        return f"needs at least {ctx['min_length']} item(s)"
    return e["msg"]


def validate_patient(obj: Any, limits: Limits = DEFAULT_LIMITS, where: str = "patient"):
    """A plain JSON value → a validated patient, or :class:`LeaderError` naming the field."""
    model = patient_model(limits)
    if isinstance(obj, model):
        return obj
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    if not isinstance(obj, dict):
        raise LeaderError(f"{where}: expected a JSON object with 'profile' and 'visits'")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise LeaderError(describe_validation_error(e, where)) from None


def default_icd_version(schema: Schema) -> int:
    """The ICD version most of the model's diagnosis and procedure vocabulary uses."""
    versions = Counter(
        c.split(":", 1)[0] for k in ("diagnoses", "procedures") for c in schema.vocab[k].codes
    )
    top = versions.most_common(1)
    return int(top[0][0].removeprefix("icd")) if top and top[0][0] in ("icd9", "icd10") else 9


@cache
def _ndc_to_atc3() -> dict[str, str]:

    table = ndc_map()
    return dict(zip(table["ndc"].to_list(), table["atc3"].to_list(), strict=True))


def icd_code(code: str, version: int) -> str:
    """``icd10:I10`` / ``I10`` / ``401.9`` → the vocabulary key (``icd10:I10``, ``icd9:4019``)."""
    text = code.strip()
    m = ICD_PREFIX.match(text)
    if m:
        return icd_key(text[m.end() :], m.group(1))
    return icd_key(text, version)


def drug_code(code: str) -> str | None:
    """An ATC or NDC code → its ATC3 class, or None when it cannot be mapped."""
    text = code.strip().upper()
    if text.startswith("NDC:"):
        text = text[4:].strip()
    elif text.startswith("ATC:"):
        text = text[4:].strip()
    if NDC_CODE.match(text):
        digits = text.replace("-", "")
        if len(digits) > 11:
            return None
        return _ndc_to_atc3().get(digits.zfill(11))
    return text[:4] if ATC_CODE.match(text) else None


class PatientReader:
    """Maps validated patients onto one model's vocabulary (built once per loaded model)."""

    def __init__(self, schema: Schema, limits: Limits = DEFAULT_LIMITS):
        self.schema = schema
        self.limits = limits
        self.default_icd_version = default_icd_version(schema)
        self.index = {k: schema.vocab[k].index for k in CODE_KINDS}

    def to_sample(self, patient: Any, patient_id: str = "patient") -> tuple[Sample, list[str]]:
        """Validate (if needed) and map a patient; return the sample and its warnings."""
        p = validate_patient(patient, self.limits)
        warnings: list[str] = []
        last = len(p.visits) - 1
        visits = []
        for i, v in enumerate(p.visits):
            version = v.icd_version or self.default_icd_version
            dx = self._known([icd_code(c, version) for c in v.diagnoses], "diagnoses", i, warnings)
            px = [icd_code(c, version) for c in v.procedures]
            px = self._known(px, "procedures", i, warnings)
            drugs: list[str] = []
            if i == last and v.drugs:
                warnings.append(
                    f"visits[{i}].drugs: this is the visit to recommend for; its drugs are ignored"
                )
            elif v.drugs:
                mapped = [(c, drug_code(c)) for c in v.drugs]
                unmapped = [c for c, atc in mapped if atc is None]
                if unmapped:
                    warnings.append(
                        f"visits[{i}].drugs: not an ATC code or a known NDC, ignored: {unmapped}"
                    )
                drugs = self._known([a for _, a in mapped if a], "drugs", i, warnings)
            visits.append(Visit(tuple(dx), tuple(px), tuple(dict.fromkeys(drugs))))
        if not visits[-1].diagnoses and not visits[-1].procedures:
            warnings.append(
                f"visits[{last}]: no diagnosis or procedure the model knows; "
                "the recommendation rests on the profile and history only"
            )
        profile = self._profile(p.profile, warnings)
        pid = p.id or patient_id
        return Sample(f"{pid}/{last}", pid, tuple(visits), profile), warnings

    def _known(self, keys: list[str], kind: str, i: int, warnings: list[str]) -> list[str]:
        index = self.index[kind]
        unknown = [k for k in keys if k not in index]
        if unknown:
            warnings.append(f"visits[{i}].{kind}: unknown to the model, ignored: {unknown}")
        return list(dict.fromkeys(k for k in keys if k in index))

    def _profile(self, given: dict, warnings: list[str]) -> dict:
        fields = self.schema.profile_fields
        extra = sorted(set(given) - set(fields))
        if extra:
            warnings.append(f"profile: fields unknown to the model, ignored: {extra}")
        profile: dict[str, Any] = {}
        for f in fields:
            value = given.get(f)
            if f == "age":  # validated: a whole number 0-150 or None
                profile[f] = value
                continue
            if value is not None and str(value) not in self.schema.profile_vocab[f]:
                warnings.append(f"profile.{f}: value {str(value)!r} unknown to the model")
            profile[f] = UNKNOWN if value is None else str(value)
        return profile

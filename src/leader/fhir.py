"""FHIR R4 input: a ``Bundle`` of Patient, Encounter, Condition, Procedure, MedicationRequest
→ the plain patient of :mod:`leader.patient`.

The Bundle is validated with ``fhir.resources`` (its R4B models: identical to R4 for every
resource read here). Each Encounter is a visit, ordered by ``period.start``; Conditions,
Procedures and MedicationRequests join their visit through ``encounter`` (``Encounter/<id>`` or
the entry's ``fullUrl``). A Bundle without Encounters is one visit. Codings are read by system:

==================================================  ==========================================
system                                              becomes
==================================================  ==========================================
http://hl7.org/fhir/sid/icd-9-cm                    ``icd9:`` diagnosis / procedure
http://hl7.org/fhir/sid/icd-10-cm                   ``icd10:`` diagnosis
http://hl7.org/fhir/sid/icd-10 (WHO)                ``icd10:`` diagnosis
http://www.cms.gov/Medicare/Coding/ICD10            ``icd10:`` procedure (ICD-10-PCS)
http://hl7.org/fhir/sid/ndc                         drug, NDC mapped to ATC3
http://www.whocc.no/atc                             drug, ATC (cut to level 3)
==================================================  ==========================================

The profile comes from Patient: ``gender`` (male/female → M/F, as in MIMIC), ``birthDate`` (age in
years at the start of the last encounter), ``maritalStatus``, ``communication.language``, the
US Core race extension (→ ``ethnicity``), the religion extension, and, for any other field,
an extension ``https://leader.invalid/fhir/profile/<field>`` with a ``valueString``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from leader.errors import LeaderError
from leader.patient import DEFAULT_LIMITS, Limits, describe_validation_error, validate_patient

ICD9 = "http://hl7.org/fhir/sid/icd-9-cm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10WHO = "http://hl7.org/fhir/sid/icd-10"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
ICD10PCS_ALIAS = "http://hl7.org/fhir/sid/icd-10-pcs"
NDC = "http://hl7.org/fhir/sid/ndc"
ATC = "http://www.whocc.no/atc"
SYSTEMS: dict[str, dict[str, str]] = {
    "Condition": {ICD9: "icd9:", ICD10CM: "icd10:", ICD10WHO: "icd10:"},
    "Procedure": {ICD9: "icd9:", ICD10PCS: "icd10:", ICD10PCS_ALIAS: "icd10:"},
    "MedicationRequest": {NDC: "ndc:", ATC: "atc:"},
}
KIND = {"Condition": "diagnoses", "Procedure": "procedures", "MedicationRequest": "drugs"}
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
RELIGION = "http://hl7.org/fhir/StructureDefinition/patient-religion"
PROFILE_EXT = "https://leader.invalid/fhir/profile/"
GENDER = {"male": "M", "female": "F"}
MARITAL = {
    "M": "MARRIED",
    "S": "SINGLE",
    "U": "SINGLE",
    "D": "DIVORCED",
    "W": "WIDOWED",
    "L": "SEPARATED",
    "T": "LIFE PARTNER",
}
LANGUAGE = {"en": "ENGL", "es": "SPAN", "ru": "RUSS", "pt": "PORT", "zh": "CANT"}
SKIPPED_STATUS = {"entered-in-error", "refuted", "cancelled", "not-done"}
# Real Bundles nest about ten levels (entry.resource.code.coding...); a deeper one is hostile
# and would exhaust the validator's recursion instead of getting a clear answer.
MAX_DEPTH = 32
BUNDLE_TYPES = (
    "document", "message", "transaction", "transaction-response", "batch", "batch-response",
    "history", "searchset", "collection",
)  # FHIR R4's bundle-type value set (fhir.resources accepts any code)


def check_depth(obj: Any, limit: int = MAX_DEPTH, where: str = "bundle") -> None:
    """Refuse JSON nested deeper than ``limit`` (iteratively: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise LeaderError(f"{where}: nested more than {limit} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_bundle(obj: dict) -> Any:
    """Validate a FHIR Bundle; every problem becomes a :class:`LeaderError` naming the path."""
    from fhir.resources.R4B.bundle import Bundle

    if obj.get("resourceType") != "Bundle":
        raise LeaderError(
            f"resourceType: expected a FHIR 'Bundle', got {str(obj.get('resourceType'))[:40]!r}"
        )
    check_depth(obj)
    if obj.get("type") is not None and obj.get("type") not in BUNDLE_TYPES:
        raise LeaderError(
            f"bundle.type: expected one of {', '.join(BUNDLE_TYPES)}, "
            f"got {str(obj.get('type'))[:40]!r}"
        )
    try:
        return Bundle.model_validate(obj)
    except RecursionError:
        raise LeaderError(f"bundle: nested more than {MAX_DEPTH} levels deep") from None
    except ValidationError as e:
        problems = describe_validation_error(e, "bundle")
        raise LeaderError(f"invalid FHIR Bundle: {problems}") from None
    except (ValueError, TypeError, KeyError) as e:  # fhir.resources raises some plain errors
        raise LeaderError(f"invalid FHIR Bundle: {str(e)[:300]}") from None


def bundle_to_patient(obj: dict, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, list[str]]:
    """A FHIR Bundle (parsed JSON) → (validated patient, warnings)."""
    bundle = parse_bundle(obj)
    warnings: list[str] = []
    by_type: dict[str, list[tuple[int, str, Any]]] = {}
    for i, entry in enumerate(bundle.entry or []):
        if entry.resource is None:
            continue
        kind = entry.resource.get_resource_type()
        by_type.setdefault(kind, []).append((i, entry.fullUrl or "", entry.resource))
    ignored = sorted(set(by_type) - {"Patient", "Encounter", "Medication", *KIND})
    if ignored:
        warnings.append(f"bundle: resource types not used, ignored: {ignored}")
    patients = by_type.get("Patient", [])
    if len(patients) > 1:
        raise LeaderError("bundle: expected one Patient resource, found several")

    encounters = _ordered_encounters(by_type.get("Encounter", []))
    keys: dict[str, int] = {}
    for v, (_, full_url, enc) in enumerate(encounters):
        keys[f"Encounter/{enc.id}"] = v
        if full_url:
            keys[full_url] = v
    visits: list[dict[str, list[str]]] = [
        {k: [] for k in KIND.values()} for _ in range(max(len(encounters), 1))
    ]
    medications = {f"Medication/{m.id}": m for _, _, m in by_type.get("Medication", [])}
    medications.update({url: m for _, url, m in by_type.get("Medication", []) if url})

    for kind, field in KIND.items():
        for i, _, res in by_type.get(kind, []):
            where = f"bundle.entry[{i}] ({kind})"
            if _status(res) in SKIPPED_STATUS:
                continue
            visit = _visit_of(res, keys, len(encounters), where, warnings)
            if visit is None:
                continue
            code = _code(kind, res, medications, where, warnings)
            if code is not None:
                visits[visit][field].append(code)

    profile = _profile(patients[0][2] if patients else None, encounters, warnings)
    patient = {"profile": profile, "visits": visits}
    if patients and patients[0][2].id:
        patient["id"] = str(patients[0][2].id)[:128]
    return validate_patient(patient, limits, where="patient (from the FHIR bundle)"), warnings


def _age(text: str) -> int:
    """The age extension's valueString: ASCII digits only (``"²"`` is a digit to Python)."""
    value = text.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 3):
        raise LeaderError(
            f"Patient.extension {PROFILE_EXT}age: expected years as digits, got {value[:20]!r}"
        )
    return int(value)


def _ordered_encounters(encounters: list[tuple[int, str, Any]]) -> list[tuple[int, str, Any]]:
    if len(encounters) <= 1:
        return encounters
    missing = [i for i, _, e in encounters if not (e.period and e.period.start)]
    if missing:
        raise LeaderError(
            f"bundle.entry[{missing[0]}] (Encounter): period.start is needed to order the visits"
        )
    return sorted(encounters, key=lambda t: _as_datetime(t[2].period.start).timestamp())


def _as_datetime(value: Any) -> datetime:
    """FHIR dateTime (possibly partial, possibly without zone) → an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = str(value)
    text = text + "-01" * max(0, 2 - text.count("-"))  # "2020" / "2020-05" → a day
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise LeaderError(f"bundle: cannot read the date {text[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _status(res: Any) -> str:
    status = getattr(res, "status", None)
    verification = getattr(res, "verificationStatus", None)
    if verification is not None and verification.coding:
        return str(verification.coding[0].code or "")
    return str(status or "")


def _visit_of(
    res: Any, keys: dict[str, int], n_encounters: int, where: str, warnings: list[str]
) -> int | None:
    ref = res.encounter.reference if getattr(res, "encounter", None) else None
    if ref is None:
        if n_encounters <= 1:
            return 0
        warnings.append(f"{where}: no encounter reference among several encounters; ignored")
        return None
    if ref not in keys:
        warnings.append(f"{where}: encounter {ref[:80]!r} not in the bundle; ignored")
        return None
    return keys[ref]


def _code(
    kind: str, res: Any, medications: dict[str, Any], where: str, warnings: list[str]
) -> str | None:
    concept = getattr(res, "code", None)
    if kind == "MedicationRequest":
        concept = res.medicationCodeableConcept
        if concept is None and res.medicationReference is not None:
            med = medications.get(res.medicationReference.reference or "")
            concept = med.code if med is not None else None
    codings = concept.coding if concept is not None and concept.coding else []
    for coding in codings:
        prefix = SYSTEMS[kind].get(coding.system or "")
        if prefix and coding.code:
            return prefix + str(coding.code)
    systems = sorted({c.system or "(no system)" for c in codings})
    warnings.append(f"{where}: no coding in a supported system (found {systems[:3]}); ignored")
    return None


def _profile(patient: Any, encounters: list, warnings: list[str]) -> dict[str, Any]:
    if patient is None:
        warnings.append("bundle: no Patient resource; profile unknown")
        return {}
    profile: dict[str, Any] = {}
    if patient.gender:
        profile["gender"] = GENDER.get(patient.gender, "unknown")
    if patient.birthDate:
        starts = [e.period.start for _, _, e in encounters if e.period and e.period.start]
        if starts:
            at = max(_as_datetime(s) for s in starts).date()
            born = _as_datetime(patient.birthDate).date()
            if born > at:
                raise LeaderError(
                    f"Patient.birthDate {born.isoformat()} is after the last encounter "
                    f"({at.isoformat()}); expected a date of birth before the visits"
                )
            profile["age"] = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
        else:
            warnings.append("profile.age: no encounter date to compute it from; unknown")
    if patient.maritalStatus and patient.maritalStatus.coding:
        code = str(patient.maritalStatus.coding[0].code or "")
        profile["marital_status"] = MARITAL.get(code, "unknown")
    for comm in patient.communication or []:
        codings = comm.language.coding if comm.language and comm.language.coding else []
        if codings and codings[0].code:
            lang = str(codings[0].code).split("-")[0].lower()
            profile["language"] = LANGUAGE.get(lang, lang.upper())
            break
    for ext in patient.extension or []:
        url = ext.url or ""
        if url == RACE:
            text = next((x.valueString for x in ext.extension or [] if x.url == "text"), None)
            if text:
                profile["ethnicity"] = str(text).upper()
        elif url == RELIGION and ext.valueCodeableConcept is not None:
            concept = ext.valueCodeableConcept
            text = concept.text or (concept.coding[0].display if concept.coding else None)
            if text:
                profile["religion"] = str(text).upper()
        elif url.startswith(PROFILE_EXT) and ext.valueString is not None:
            field = url.removeprefix(PROFILE_EXT)
            profile[field] = _age(ext.valueString) if field == "age" else str(ext.valueString)
    return profile

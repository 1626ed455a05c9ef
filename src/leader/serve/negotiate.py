"""What a REST request asks for besides the patient: explanations, and FHIR out.

``"explain": true`` may travel in the JSON body (next to the patient or the batch's
``patients``) or as ``?explain=true``; ``Accept: application/fhir+json`` asks for FHIR R4
Bundles (:mod:`leader.fhir_out`) instead of leader's own JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from leader.errors import LeaderError
from leader.fhir_out import as_fhir

FHIR_JSON = "application/fhir+json"


def pop_explain(body: Any, flag: bool) -> bool:
    """Take ``"explain"`` out of a JSON body (so the patient schema never sees it)."""
    if not isinstance(body, dict) or "explain" not in body:
        return flag
    value = body.pop("explain")
    if not isinstance(value, bool):
        raise LeaderError(f"explain: expected true or false, got {json.dumps(value)[:40]}")
    return flag or value


def wants_fhir(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == FHIR_JSON for part in accept.split(","))


def fhir_response(results: list[dict] | dict, key: str | None = None) -> Response:
    """FHIR Bundles as ``application/fhir+json``; ``key`` wraps a list (the batch answer)."""
    out = as_fhir(results)
    body = {key: out} if key else out
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type=FHIR_JSON)

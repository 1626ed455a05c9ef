"""Service settings and the response shapes the OpenAPI document describes.

Responses are built as plain dicts by :mod:`leader.recommend` (the same output as the CLI and
the Python API) and serialised directly; these models document them, they are not re-validated
per request, which would cost more than the model call for small models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from leader.patient import DEFAULT_LIMITS, Limits

MIB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs. Defaults are the safe ones: loopback only, small bodies."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; None = no authentication (loopback use)
    max_body_bytes: int = MIB
    max_batch: int = 100
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    allowed_hosts: tuple[str, ...] = ()  # Host header names besides loopback (no-token mode)
    head_timeout: float = 10.0  # seconds for a request's head, after connecting or a response
    body_timeout: float = 30.0  # seconds for a request's body


class DrugScore(BaseModel):
    code: str = Field(description="ATC level-3 class, e.g. N02B")
    name: str
    probability: float


class DDIWarning(BaseModel):
    drugs: list[str] = Field(description="The two interacting ATC3 classes")
    names: list[str]


class ModelInfo(BaseModel):
    name: str
    id: str = Field(description="Model name and a hash of the bundle's contents")
    version: str = Field(description="leader version that built the bundle")
    created: str


class Recommendation(BaseModel):
    patient_id: str
    model: ModelInfo
    ranked: list[DrugScore] = Field(description="Every drug class, most probable first")
    recommended: list[str] = Field(description="Classes at or above the threshold, or top_k")
    ddi_warnings: list[DDIWarning] = Field(description="Interacting pairs inside `recommended`")
    threshold: float | None
    top_k: int | None
    warnings: list[str] = Field(description="Unknown codes and other non-fatal problems")
    explanation: dict | None = Field(
        None,
        description="With explain: {method, unit, drugs: {code: [{kind, code, title, "
        "contribution}]}}, the inputs that raise each recommended class most",
    )


class BatchResponse(BaseModel):
    results: list[Recommendation]


class Health(BaseModel):
    status: str
    model: str


class VocabHit(BaseModel):
    code: str
    title: str
    count: int


class VocabResult(BaseModel):
    kind: str
    results: list[VocabHit]


class ErrorBody(BaseModel):
    detail: str

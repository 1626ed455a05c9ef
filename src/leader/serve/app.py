"""The REST service: FastAPI app factory, request limits, auth, and the web page.

Every bad request gets a 4xx with a one-line ``detail`` naming the problem: the body is read
by hand (Content-Length checked, then the streamed size, then JSON, then the strict patient
schema), so a hostile request costs little and never reaches the model. Patient data never
goes to the logs: uvicorn's access log is off (see :func:`run`) and unexpected errors are
logged by exception type only (:class:`leader.serve.guards.ErrorBoundary`). Without a token,
the Host header must name this server (:class:`leader.serve.guards.HostCheck`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from leader import __version__
from leader.data.vocab import CODE_KINDS
from leader.errors import LeaderError
from leader.fhir import BUNDLE_TYPES
from leader.patient import patient_json_schema
from leader.recommend import Recommender, check_choice, is_fhir, json_value
from leader.serve.batching import MicroBatcher
from leader.serve.cds import cds_router
from leader.serve.guards import LOOPBACK_NAMES, ErrorBoundary, HostCheck
from leader.serve.negotiate import fhir_response, pop_explain, wants_fhir
from leader.serve.schemas import (
    BatchResponse,
    ErrorBody,
    Health,
    Recommendation,
    ServeSettings,
    VocabResult,
)
from leader.serve.search import VocabSearch

STATIC = Path(__file__).parent / "static"
JSON_TYPES = ("application/json", "application/fhir+json")
CLOSE_AFTER = (400, 401, 408, 413, 415)  # refused before the body was read in full
ERRORS = {
    400: {"model": ErrorBody, "description": "Invalid JSON, or a Host header not allowed"},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    408: {"model": ErrorBody, "description": "Body not received in time"},
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    415: {"model": ErrorBody, "description": "Not a JSON content type"},
    422: {"model": ErrorBody, "description": "Valid JSON, but not a valid patient"},
}
# the responses of every operation that takes no body (Host check, auth, query parameters)
GET_ERRORS = {k: ERRORS[k] for k in (400, 401)} | {
    422: {"model": ErrorBody, "description": "Invalid query parameter"}
}


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        self.status, self.detail, self.headers = status, detail, headers


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status, headers=headers, media_type="application/json")


class SecurityHeaders:
    """Pure ASGI middleware (no per-request task overhead): no caching of patient answers,
    no content sniffing, and a page that may only load its own scripts and styles."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    ]

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/docs"):
            await self.app(scope, receive, send)  # Swagger UI needs its own CDN scripts
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_json_body(request: Request, limit: int, timeout: float = 30.0) -> Any:
    """The request body as JSON, refusing oversize, non-JSON, malformed and slow bodies (4xx)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise ApiError(415, "expected Content-Type: application/json (or application/fhir+json)")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "Content-Length: expected a number of bytes")
        if int(length) > limit:
            raise ApiError(413, f"body: {length} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body: over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"body: not received within {timeout:g} s") from None
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "body: empty; expected a JSON patient or FHIR Bundle")
    try:
        return json_value(body)
    except LeaderError as e:  # "not valid JSON (reason)"
        reason = str(e).removeprefix("not valid JSON ")
        raise ApiError(400, f"body: invalid JSON {reason}") from None


def create_app(recommender: Recommender, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving one loaded :class:`leader.recommend.Recommender`."""
    settings = settings or ServeSettings()
    reader = recommender.reader(settings.limits)
    search = VocabSearch(recommender.schema)
    card = _model_card(recommender, settings, reader.default_icd_version)
    health = {"status": "ok", "model": card["model"]["id"]}
    n_drugs = len(recommender.schema.drugs)
    token = settings.token.encode() if settings.token else None
    batcher = MicroBatcher(recommender.predict_proba)

    app = FastAPI(
        title="leader",
        version=__version__,
        description="Medication recommendation (ATC3 drug classes) for one hospital visit. "
        "Decision support only: every recommendation needs review by a clinician.",
        redoc_url=None,
    )
    app.state.batcher = batcher  # read by tests and anyone monitoring batch sizes
    app.add_middleware(SecurityHeaders)
    if token is None:  # with a token, a rebinding page cannot authenticate anyway
        allowed = (*LOOPBACK_NAMES, *settings.allowed_hosts)
        if settings.host not in ("0.0.0.0", "::", ""):
            allowed = (*allowed, settings.host)
        app.add_middleware(HostCheck, allowed=allowed)
    app.add_middleware(ErrorBoundary)
    _install_error_handlers(app)

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def no_unknown_query(request: Request) -> None:
        route = request.scope.get("route")
        known = {p.alias for p in route.dependant.query_params} if route else set()
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            shown = ", ".join(repr(u[:40]) for u in unknown[:3])
            raise ApiError(422, f"query: unknown parameter(s) {shown} (allowed: {sorted(known)})")

    strict = [Depends(no_unknown_query)]
    guarded = [Depends(authorised), *strict]
    top_k_q = Query(None, ge=1, le=n_drugs, description="Recommend the k most probable classes")
    threshold_q = Query(None, ge=0.0, le=1.0, description="Override the bundle's threshold")
    explain_q = Query(False, description="Add the reasons behind each recommended class")

    async def answer(
        patients: list[Any], top_k: int | None, threshold: float | None, explain: bool
    ) -> list:
        """Both endpoints: read the patients, score them through the micro-batcher (concurrent
        requests share one model call, on the event loop: a hop to the thread pool per request
        only made them contend for the GIL and the two cores), build the outputs. With
        ``explain``, one model call scores the patients and their occluded copies together."""
        try:
            check_choice(top_k, threshold)
            if len(patients) > 1 or is_fhir(patients[0]):  # validating Bundles takes long:
                parsed = await run_in_threadpool(recommender.read_many, patients, settings.limits)
            else:  # one plain patient reads faster than a hop to the thread pool
                parsed = recommender.read_many(patients, settings.limits)
        except LeaderError as e:
            raise ApiError(422, str(e)) from None
        if explain:
            return await run_in_threadpool(recommender.recommend_samples, parsed, top_k,
                                           threshold, True)
        probs = await batcher.probabilities([sample for sample, _ in parsed])
        return recommender.outputs(parsed, probs, top_k, threshold)

    @app.post(
        "/v1/recommend",
        dependencies=guarded,
        response_model=Recommendation,
        responses=ERRORS,
        summary="Recommend drug classes for one patient (JSON patient or FHIR R4 Bundle)",
        openapi_extra=_body_doc("Patient"),
    )
    async def recommend(
        request: Request,
        top_k: int | None = top_k_q,
        threshold: float | None = threshold_q,
        explain: bool = explain_q,
    ) -> Response:
        patient = await read_json_body(request, settings.max_body_bytes, settings.body_timeout)
        try:
            explain = pop_explain(patient, explain)
        except LeaderError as e:
            raise ApiError(422, str(e)) from None
        result = (await answer([patient], top_k, threshold, explain))[0]
        return fhir_response(result) if wants_fhir(request) else _json(result)

    @app.post(
        "/v1/recommend/batch",
        dependencies=guarded,
        response_model=BatchResponse,
        responses=ERRORS,
        summary="Recommend for several patients; any invalid patient fails the whole request",
        openapi_extra=_body_doc("BatchRequest"),
    )
    async def recommend_batch(
        request: Request,
        top_k: int | None = top_k_q,
        threshold: float | None = threshold_q,
        explain: bool = explain_q,
    ) -> Response:
        body = await read_json_body(request, settings.max_body_bytes, settings.body_timeout)
        try:
            explain = pop_explain(body, explain)
        except LeaderError as e:
            raise ApiError(422, str(e)) from None
        if not isinstance(body, dict) or set(body) != {"patients"}:
            raise ApiError(422, 'body: expected {"patients": [patient, ...]} and nothing else')
        patients = body["patients"]
        if not isinstance(patients, list) or not patients:
            raise ApiError(422, "patients: expected a non-empty list of patients")
        if len(patients) > settings.max_batch:
            raise ApiError(422, f"patients: too many items (at most {settings.max_batch})")
        results = await answer(patients, top_k, threshold, explain)
        if wants_fhir(request):
            return fhir_response(results, "results")
        return _json({"results": results})

    @app.get(
        "/v1/health",
        response_model=Health,
        dependencies=strict,
        responses={400: ERRORS[400], 422: GET_ERRORS[422]},
        summary="Liveness; no authentication",
    )
    def get_health() -> Response:
        return _json(health)

    @app.get(
        "/v1/model",
        dependencies=guarded,
        responses=GET_ERRORS,
        summary="Model card, metrics, vocab sizes",
    )
    def get_model() -> Response:
        return _json(card)

    @app.get(
        "/v1/vocab",
        dependencies=guarded,
        response_model=VocabResult,
        responses=GET_ERRORS,
        summary="Search codes",
    )
    def get_vocab(
        q: str = Query("", max_length=64, description="Code prefix or words of the title"),
        kind: str = Query("diagnoses", pattern="^(diagnoses|procedures|drugs)$"),
        limit: int = Query(20, ge=1, le=100),
    ) -> Response:
        return _json({"kind": kind, "results": search.search(kind, q, limit)})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.include_router(cds_router(recommender, reader, guarded, settings, read_json_body))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _document_patient(app, settings)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure becomes ``{"detail": "..."}``; only a bug in leader itself is a 500."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        headers = dict(exc.headers or {})
        if exc.status in CLOSE_AFTER:  # the body may be unread (or never coming): hang up
            headers["Connection"] = "close"
        return _json({"detail": exc.detail}, exc.status, headers)

    @app.exception_handler(LeaderError)
    async def leader_error(_: Request, exc: LeaderError) -> Response:
        return _json({"detail": str(exc)}, 422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _json({"detail": "; ".join(parts) or "invalid request"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json({"detail": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))



def _model_card(rec: Recommender, settings: ServeSettings, icd_version: int) -> dict:
    """Everything GET /v1/model answers, computed once (no file reads per request)."""
    schema = rec.schema
    readme = rec.directory / "README.md"
    return {
        "model": rec.info,
        "threshold": rec.threshold,
        "parameters": rec.manifest.get("parameters"),
        "data": rec.manifest.get("data", {}),
        "metrics": rec.metrics,
        "card": readme.read_text() if readme.is_file() else "",
        "vocab_sizes": {k: len(schema.vocab[k]) for k in CODE_KINDS},
        "profile": schema.profile_vocab,
        "default_icd_version": icd_version,
        "ddi": {"source": schema.ddi_source, "pairs": len(schema.ddi_pairs)},
        "limits": {
            **settings.limits.__dict__,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch": settings.max_batch,
        },
    }


FHIR_BUNDLE = {
    "type": "object",
    "description": "A FHIR R4 Bundle; its entries' resources (Patient, Encounter, Condition, "
    "Procedure, MedicationRequest, Medication) follow FHIR R4 and docs/serving.md",
    "properties": {
        "resourceType": {"type": "string", "enum": ["Bundle"]},
        "type": {"type": "string", "enum": list(BUNDLE_TYPES)},
        "id": {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,64}$"},
        "entry": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"fullUrl": {"type": "string"}},
                "additionalProperties": False,
                "description": "fullUrl, and a resource (a FHIR R4 resource object)",
            },
        },
    },
    "required": ["resourceType", "type"],
    "additionalProperties": False,
}


def _body_doc(name: str) -> dict:
    ref = {"$ref": f"#/components/schemas/{name}"}
    fhir = FHIR_BUNDLE if name == "Patient" else ref
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref},
                "application/fhir+json": {"schema": fhir},
            },
        }
    }


def _document_patient(app: FastAPI, settings: ServeSettings) -> None:
    """Put the patient schema (built for these limits) into the OpenAPI components."""
    base = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = base()
        schema = patient_json_schema(settings.limits)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["Patient"] = schema
        components["BatchRequest"] = {
            "type": "object",
            "properties": {
                "patients": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Patient"},
                    "minItems": 1,
                    "maxItems": settings.max_batch,
                }
            },
            "required": ["patients"],
            "additionalProperties": False,
        }
        _document_errors(doc, settings)
        text = json.dumps(doc).replace("#/$defs/", "#/components/schemas/")
        app.openapi_schema = json.loads(text)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(doc: dict, settings: ServeSettings) -> None:
    """Every error is ``{"detail": str}`` (FastAPI documents its own list for 422); the token,
    when set, is a bearer security scheme; 400 (Host) is documented only where it can happen."""
    error = {"$ref": "#/components/schemas/ErrorBody"}
    doc["components"]["schemas"].pop("HTTPValidationError", None)
    doc["components"]["schemas"].pop("ValidationError", None)
    for path in doc.get("paths", {}).values():
        for op in path.values():
            responses = op.get("responses", {})
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    response["content"] = {"application/json": {"schema": error}}
            if settings.token is None:
                responses.pop("401", None)
            elif "401" in responses:
                op["security"] = [{"bearer": []}]
            if settings.token is not None and op.get("requestBody") is None:
                responses.pop("400", None)
    if settings.token is not None:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}


def run(recommender: Any, settings: ServeSettings, announce: Any = None) -> None:
    """Bind (a busy port is a one-line error), call ``announce``, serve until interrupted."""
    from leader.serve.server import serve  # deferred on purpose: uvicorn, only to run

    serve(
        create_app(recommender, settings),
        settings.host,
        settings.port,
        settings.head_timeout,
        announce or (lambda: None),
    )

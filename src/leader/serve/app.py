"""The REST service: FastAPI app factory, request limits, auth, and the web page.

Every bad request gets a 4xx with a one-line ``detail`` naming the problem: the body is read
by hand (Content-Length checked, then the streamed size, then JSON, then the strict patient
schema), so a hostile request costs little and never reaches the model. Patient data never
goes to the logs: uvicorn's access log is off (see :func:`run`) and unexpected errors are
logged by exception type only.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from leader import __version__
from leader.errors import LeaderError
from leader.patient import CODE_KINDS, patient_json_schema
from leader.recommend import (
    check_choice,
    model_info,
    outputs,
    read_patient,
    reader_for,
    recommend_samples,
)
from leader.serve.batching import MicroBatcher
from leader.serve.cds import cds_router
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
CLOSE_AFTER = (400, 401, 413, 415)  # refused before the body was read in full
log = logging.getLogger("leader.serve")
ERRORS = {
    400: {"model": ErrorBody, "description": "Invalid JSON"},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    415: {"model": ErrorBody, "description": "Not a JSON content type"},
    422: {"model": ErrorBody, "description": "Valid JSON, but not a valid patient"},
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


async def read_json_body(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing oversize, non-JSON and malformed bodies with a 4xx."""
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
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "body: empty; expected a JSON patient or FHIR Bundle")
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "body: invalid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int too large
        raise ApiError(400, f"body: invalid JSON ({str(e)[:200]})") from None


def create_app(recommender: Any, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving one loaded :class:`leader.bundle.Recommender`."""
    settings = settings or ServeSettings()
    reader = reader_for(recommender, settings.limits)
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
    _install_error_handlers(app)

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]
    top_k_q = Query(None, ge=1, le=n_drugs, description="Recommend the k most probable classes")
    threshold_q = Query(None, ge=0.0, le=1.0, description="Override the bundle's threshold")
    explain_q = Query(False, description="Add the reasons behind each recommended class")

    def score(
        patients: list[Any], top_k: int | None, threshold: float | None, explain: bool = False
    ) -> list[dict]:
        parsed = []
        for i, p in enumerate(patients):
            where = f"patients[{i}]: " if len(patients) > 1 else ""
            try:
                parsed.append(read_patient(reader, p, f"patient{i}"))
            except LeaderError as e:
                raise ApiError(422, f"{where}{e}") from None
        return recommend_samples(recommender, parsed, top_k, threshold, explain)

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
        patient = await read_json_body(request, settings.max_body_bytes)
        try:
            explain = pop_explain(patient, explain)
            check_choice(top_k, threshold)
            parsed = read_patient(reader, patient, "patient0")
        except LeaderError as e:
            raise ApiError(422, str(e)) from None
        # concurrent requests share one model call, run on the event loop: a hop to the thread
        # pool per request only made them contend for the GIL and the two cores
        if explain:  # one model call scores the patient and its occluded copies together
            result = recommend_samples(recommender, [parsed], top_k, threshold, explain)[0]
        else:
            probs = await batcher.probabilities(parsed[0])
            result = outputs(recommender, [parsed], probs[None, :], top_k, threshold)[0]
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
        body = await read_json_body(request, settings.max_body_bytes)
        explain = pop_explain(body, explain)
        if not isinstance(body, dict) or set(body) != {"patients"}:
            raise ApiError(422, 'body: expected {"patients": [patient, ...]} and nothing else')
        patients = body["patients"]
        if not isinstance(patients, list) or not patients:
            raise ApiError(422, "patients: expected a non-empty list of patients")
        if len(patients) > settings.max_batch:
            raise ApiError(422, f"patients: too many items (at most {settings.max_batch})")
        results = await run_in_threadpool(score, patients, top_k, threshold, explain)
        if wants_fhir(request):
            return fhir_response(results, "results")
        return _json({"results": results})

    @app.get("/v1/health", response_model=Health, summary="Liveness; no authentication")
    def get_health() -> Response:
        return _json(health)

    @app.get("/v1/model", dependencies=guarded, summary="Model card, metrics, vocab sizes")
    def get_model() -> Response:
        return _json(card)

    @app.get("/v1/vocab", dependencies=guarded, response_model=VocabResult, summary="Search codes")
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

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.error("internal error while serving a request: %s", type(exc).__name__)
        return _json({"detail": "internal error (logged without patient data)"}, 500)


def _model_card(rec: Any, settings: ServeSettings, icd_version: int) -> dict:
    """Everything GET /v1/model answers, computed once (no file reads per request)."""
    schema = rec.schema
    readme = rec.directory / "README.md"
    return {
        "model": model_info(rec),
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


def _body_doc(name: str) -> dict:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ref}, "application/fhir+json": {}},
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
                    "maxItems": settings.max_batch,
                }
            },
            "required": ["patients"],
            "additionalProperties": False,
        }
        text = json.dumps(doc).replace("#/$defs/", "#/components/schemas/")
        app.openapi_schema = json.loads(text)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def run(recommender: Any, settings: ServeSettings) -> None:
    """Serve until interrupted. Access log off: paths and queries may carry patient codes."""
    import uvicorn

    uvicorn.run(
        create_app(recommender, settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="info",
        server_header=False,
    )

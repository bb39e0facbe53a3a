"""REST gateway (FastAPI): ``POST /v1/filter`` and friends in front of the Triton server.

Each request is scored by a ``FilterClient`` (tokenization and stitching here, window batches to
Triton over gRPC, retried while Triton heals). Concurrent requests are scored in worker threads, and their window batches meet
in Triton's dynamic batcher, which runs them together. Limits (body bytes, documents per request,
characters per document) and the API key are checked before any scoring; every error is JSON
``{"error": message, "limit"?: name}``: 4xx for the client's mistakes, 503 when the model server
failed, 500 with a ``request_id`` (logged, and in every response's ``X-Request-ID``) for a bug here.
``/readyz`` and the supervisor's metrics come from the status file the supervisor of
``tokfilter serve`` writes after each health check (``tokfilter.server.supervisor``).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field

from tokfilter.clients.filter_client import ServerError
from tokfilter.errors import TokfilterError
from tokfilter.scoring import hide_spans, safe_text
from tokfilter.server.supervisor import read_status, status_is_ready

log = logging.getLogger("tokfilter.gateway")
from tokfilter.server.page import add_page


class Limits(BaseModel):
    max_body_bytes: int = 8 * 1024 * 1024
    max_documents: int = 256
    max_chars: int = 1_000_000


class Document(BaseModel):
    id: str
    text: str


class FilterRequest(BaseModel):
    documents: list[Document]
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    mode: Literal["spans", "remove"] = "spans"
    tokens: bool = Field(default=False, description="also return each document's classifier tokens: character "
                         "offsets and probabilities, from which a client derives spans at any threshold")


class SpanOut(BaseModel):
    start: int
    end: int
    score: float


class TokenScores(BaseModel):
    """The classifier's tokens of one document, in text order (``"tokens": true``)."""

    offsets: list[tuple[int, int]] = Field(description="half-open [start, end) code-point offsets of each token in the text")
    probs: list[float] = Field(description="p(forget) of each token (float32 values). A character inside a token takes its "
                               "probability, a character between two tokens the lower of its neighbours' (0 before the first "
                               "and after the last token); spans are the runs of characters >= the threshold")


class DocumentResult(BaseModel):
    id: str
    doc_score: float | None
    spans: list[SpanOut]
    flagged_fraction: float
    text: str | None = None
    tokens: TokenScores | None = Field(default=None, description="per-token scores, present when the request asks for tokens")


class FilterResponse(BaseModel):
    model: str
    threshold: float
    results: list[DocumentResult]


class GatewayError(Exception):
    def __init__(self, status: int, message: str, limit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.limit = status, message, limit


def error_response(status: int, message: str, limit: str | None = None) -> JSONResponse:
    body = {"error": message} | ({"limit": limit} if limit else {})
    return JSONResponse(body, status_code=status)


class SupervisorCollector:
    """The supervisor's status file as Prometheus metrics, read at each scrape."""

    def __init__(self, status_path: Path):
        self.status_path = status_path

    def collect(self):
        status = read_status(self.status_path) or {}
        events = CounterMetricFamily("tokfilter_supervisor_events", "supervisor events: process_died, model_failed, model_busy, "
                                     "model_reloaded, reload_failed, orphans_killed, triton_restarted, restart_failed, "
                                     "round_failed, gave_up", labels=["event"])
        for name, count in (status.get("events") or {}).items():
            events.add_metric([name], count)
        ready = GaugeMetricFamily("tokfilter_model_ready", "1 while the model answered the latest health check", labels=["model"])
        for model, result in (status.get("models") or {}).items():
            ready.add_metric([model], float(result["ready"]))
        age = GaugeMetricFamily("tokfilter_health_check_age_seconds", "seconds since the latest health check")
        if "checked_at" in status:
            age.add_metric([], time.time() - status["checked_at"])
        return [events, ready, age]


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own, and the supervisor's."""

    def __init__(self, status_path: Path):
        self.registry = CollectorRegistry()
        self.registry.register(SupervisorCollector(status_path))
        self.requests = Counter("tokfilter_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.documents = Counter("tokfilter_documents", "documents filtered", registry=self.registry)
        self.tokens = Counter("tokfilter_tokens", "tokens scored", registry=self.registry)
        self.latency = Histogram("tokfilter_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.flagged = Histogram("tokfilter_flagged_fraction", "fraction of flagged tokens per document", registry=self.registry,
                                 buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0))
        self.in_flight = Gauge("tokfilter_requests_in_flight", "requests being served", registry=self.registry)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_body_bytes`` (declared or streamed) with 413 before parsing."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_big = error_response(413, f"request body exceeds max_body_bytes={self.max_body_bytes}", "max_body_bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise GatewayError(413, f"request body exceeds max_body_bytes={self.max_body_bytes}", "max_body_bytes")
            return message

        try:
            await self.app(scope, counting_receive, send)
        except GatewayError:
            await too_big(scope, receive, send)


def create_app(make_client, status_path: Path, limits: Limits = Limits(), api_key: str | None = None) -> FastAPI:
    """The gateway app; ``make_client()`` returns a connected FilterClient (called at start-up);
    ``status_path`` is the supervisor's status file."""
    metrics = Metrics(status_path)
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        state["client"] = make_client()
        try:
            yield
        finally:
            state["client"].close()

    app = FastAPI(title="tokfilter gateway", version="1", description="Token-level filtering of forget-domain text.", lifespan=lifespan)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        request.state.request_id = request_id = uuid.uuid4().hex
        metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # a bug of the gateway: logged with the id the client is given
            log.exception("request %s (%s %s) failed", request_id, request.method, request.url.path)
            response = JSONResponse({"error": "internal error of the gateway; report it with this request_id",
                                     "request_id": request_id}, status_code=500)
        finally:
            metrics.in_flight.dec()
        response.headers["X-Request-ID"] = request_id
        matched = request.scope.get("route")
        route = matched.path if matched is not None else "unmatched"  # bounded label values
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(GatewayError)
    async def on_gateway_error(_request, err: GatewayError):
        return error_response(err.status, err.message, err.limit)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request, err: RequestValidationError):
        errors = err.errors()
        if any(e.get("type") == "json_invalid" or (tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes | str)) for e in errors):
            return error_response(400, "request body is not valid JSON (send Content-Type: application/json)")
        first = errors[0] if errors else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid field {field!r}: {first.get('msg', 'invalid')}", "detail": json.loads(json.dumps(errors, default=str))}, status_code=422)

    def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise GatewayError(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")

    @app.post("/v1/filter", response_model=FilterResponse, dependencies=[Depends(check_key)])
    async def filter_documents(body: FilterRequest) -> FilterResponse:
        if len(body.documents) > limits.max_documents:
            raise GatewayError(413, f"{len(body.documents)} documents exceed max_documents={limits.max_documents}", "max_documents")
        for i, doc in enumerate(body.documents):
            if len(doc.text) > limits.max_chars:
                raise GatewayError(413, f"documents[{i}].text has {len(doc.text)} characters, over max_chars={limits.max_chars}", "max_chars")
        client = state["client"]
        texts = [safe_text(d.text) for d in body.documents]  # a lone surrogate could not be answered in UTF-8
        try:
            scores = await run_in_threadpool(client.filter, texts, body.threshold)
        except ServerError as err:  # the model server failed, or stayed away past the retry deadline
            raise GatewayError(503, f"model server error: {err}") from err
        threshold = client.threshold if body.threshold is None else body.threshold
        results = []
        for doc, text, score in zip(body.documents, texts, scores):
            metrics.tokens.inc(len(score.token_ids))
            metrics.flagged.observe(score.flagged_fraction)
            shown = hide_spans(text, score.spans) if body.mode == "remove" else None
            results.append(DocumentResult(id=doc.id, text=shown, **score.summary(tokens=body.tokens)))
        metrics.documents.inc(len(results))
        return FilterResponse(model=client.model_name, threshold=threshold, results=results)

    @app.get("/v1/models")
    def models(_: None = Depends(check_key)) -> dict:
        client = state["client"]
        return {"model": client.model_name, "threshold": client.threshold, "triton": client.address,
                "served": {name: {"output": cfg["output"][0]["name"], "max_batch_size": cfg.get("max_batch_size", 0)}
                           for name, cfg in client.server_models.items()}}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        """Ready while every model answered the supervisor's latest health check (no inference here)."""
        if "client" not in state:
            return error_response(503, "not connected to Triton yet")
        ready, reason = status_is_ready(read_status(status_path))
        return {"status": "ready"} if ready else error_response(503, reason)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_page(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes)
    return app


def main(argv: list[str] | None = None) -> int:
    """Entry point of the gateway process started by ``tokfilter serve``."""
    import uvicorn

    from tokfilter.clients.filter_client import FilterClient

    parser = argparse.ArgumentParser(prog="python -m tokfilter.server.gateway")
    parser.add_argument("--triton", required=True, help="grpc://HOST:PORT of Triton")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-dir", type=Path, required=True, help="export of the served token model (tokenizer)")
    parser.add_argument("--status-file", type=Path, required=True, help="the supervisor's status file (readiness, metrics)")
    parser.add_argument("--max-in-flight", type=int, default=8, help="window batches in flight to Triton")
    for name, default in Limits().model_dump().items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    limits = Limits(**{k: getattr(args, k) for k in Limits().model_dump()})
    try:
        api_key = os.environ.get("TOKFILTER_API_KEY")
        app = create_app(lambda: FilterClient(args.triton, args.model_dir, max_in_flight=args.max_in_flight, api_key=api_key),
                         args.status_file, limits, api_key)
    except TokfilterError as err:
        print(f"gateway: error: {err}")
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

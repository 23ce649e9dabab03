"""The FastAPI application: routes, API-key check, OpenAI-shaped errors, health, models, metrics."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenleap.async_llm import AsyncFrontend
from tokenleap.server.metrics import ServerMetrics
from tokenleap.server.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from tokenleap.server.routes import OpenAIServing


class ApiKeyMiddleware:
    """``/v1/*`` needs ``Authorization: Bearer <key>`` (checked before the body is read); /health and /metrics
    stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(auth, b"Bearer " + self.key):
                err = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                    "with the key the server was started with (--api-key)",
                               type="authentication_error", code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def validation_error(exc: RequestValidationError) -> ApiError:
    """A 400 naming the first bad field (or the JSON syntax error) and how many errors there were."""
    errors = exc.errors()
    if not errors:
        return ApiError(400, "invalid request body")
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "JSON decode error")
        return ApiError(400, f"the request body is not valid JSON: {detail} (at character {loc[0] if loc else '?'})",
                        code="invalid_json")
    param = ".".join(loc) or None
    if err.get("type") == "missing" and not loc:
        return ApiError(400, "the request needs a JSON body", code="missing_body")
    if err.get("type") == "extra_forbidden":
        msg = f"unknown field {param!r}: it is not a parameter of this endpoint"
    elif err.get("type") == "missing":
        msg = f"{param} is required"
    else:
        got = json.dumps(err.get("input"), default=str)
        msg = f"{param}: {err.get('msg')} (got {got[:200]})"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error(s))"
    return ApiError(400, msg, param)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def build_app(llm: AsyncFrontend, served_model_names: list[str], api_key: str | None = None,
              shutdown_engine: bool = False) -> FastAPI:
    """The server over ``llm``; ``shutdown_engine``: stop its engine thread when the app shuts down."""
    metrics = ServerMetrics()
    serving = OpenAIServing(llm, served_model_names, metrics)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if shutdown_engine:
            llm.shutdown()

    app = FastAPI(title="tokenleap", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.exception_handler(ApiError)
    async def _api_error(_: HttpRequest, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(_: HttpRequest, exc: Exception) -> JSONResponse:
        return _error_response(ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error"))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, http: HttpRequest) -> Response:
        return await serving.chat(req, http)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: HttpRequest) -> Response:
        return await serving.completions(req, http)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "tokenleap",
             "max_model_len": llm.max_model_len, "vocab_size": llm.vocab_size,
             "speculative_config": llm.speculative_config} for name in served_model_names]}

    @app.get("/health")
    async def health() -> Response:
        if llm.is_running:
            return Response(status_code=200)
        return _error_response(ApiError(503, f"the engine has stopped: {llm.dead}", type="server_error",
                                        code="engine_dead"))

    @app.get("/metrics")
    async def prometheus() -> Response:
        engine_metrics = await llm.engine_metrics() if llm.is_running else []
        return Response(metrics.render(engine_metrics), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.state.llm, app.state.serving = llm, serving
    return app

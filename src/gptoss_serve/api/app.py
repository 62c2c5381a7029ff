"""create_app(engine, config, tokenizer) -> FastAPI: routes, auth, error mapping, health, metrics.

Owns the HTTP surface: which path goes to which handler, the bearer-key check on /v1 routes, and
the rule that every failure leaves as an OpenAI-shaped error (400 for bad input, never a 422; 500
only for our own bugs). Knows nothing of torch or the engine's insides; handlers live in
chat.py, completions.py and responses.py (whose service, store and tools close with the app).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from gptoss_serve.api.chat import create_chat_completion, render_messages
from gptoss_serve.api.completions import create_completion
from gptoss_serve.api.context import ApiContext, check_token_ids
from gptoss_serve.api.metrics import ServerMetrics
from gptoss_serve.api.responses import closing, responses_router, responses_service
from gptoss_serve.api.schemas import (
    DetokenizeRequest,
    TokenizeRequest,
    parse_body,
    validation_to_error,
)
from gptoss_serve.config import ServerConfig
from gptoss_serve.errors import AuthenticationError, GptOssServeError

log = logging.getLogger("gptoss_serve.api")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(engine: Any, config: ServerConfig, tokenizer: Any,
               tools: dict[str, Any] | None = None) -> FastAPI:
    """The app for one engine. `engine` is an AsyncEngine (or a test double with its API);
    `tools`: the enabled built-in tools by OpenAI tool type (tools/registry.build_tools)."""
    ctx = ApiContext(engine, config, tokenizer, ServerMetrics(engine.stats))
    responses = responses_service(ctx, tools or {})
    app = FastAPI(title="gptoss-serve", docs_url=None, redoc_url=None,
                  lifespan=closing(responses))
    app.state.ctx = ctx
    app.state.responses = responses
    _install_error_handlers(app)
    app.include_router(_v1_router(ctx), dependencies=[Depends(_auth(config.api_key))])
    app.include_router(responses_router(responses), dependencies=[Depends(_auth(config.api_key))])
    app.include_router(_plain_router(ctx))
    return app


# ---- errors ----------------------------------------------------------------------------------
def error_response(exc: GptOssServeError) -> JSONResponse:
    return JSONResponse(exc.to_openai(), status_code=exc.status)


def _install_error_handlers(app: FastAPI) -> None:
    async def ours(_: Request, exc: GptOssServeError) -> JSONResponse:
        return error_response(exc)

    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_to_error(list(exc.errors())))

    async def http(_: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        err = GptOssServeError(str(exc.detail), code=code)
        err.status, err.error_type = exc.status_code, "invalid_request_error"
        return error_response(err)

    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(GptOssServeError(f"internal error: {type(exc).__name__}"))

    app.add_exception_handler(GptOssServeError, ours)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, bug)


def _auth(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
            raise AuthenticationError(
                "Incorrect or missing API key: send `Authorization: Bearer <key>`."
            )

    return check


# ---- /v1 routes ------------------------------------------------------------------------------
def _v1_router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/chat/completions")
    async def chat(request: Request) -> Response:
        return await create_chat_completion(ctx, request)

    @r.post("/completions")
    async def completions(request: Request) -> Response:
        return await create_completion(ctx, request)

    @r.get("/models")
    async def models() -> dict[str, Any]:
        cards = [_model_card(ctx, n) for n in ctx.config.served_model_names]
        return {"object": "list", "data": cards}

    @r.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        ctx.check_model(model_id)
        return _model_card(ctx, model_id)

    return r


def _model_card(ctx: ApiContext, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "gptoss-serve",
        "root": name,
        "parent": None,
        "max_model_len": ctx.engine.max_model_len,
    }


_STARTED = int(time.time())


# ---- tokenizer, health, metrics ---------------------------------------------------------------
def _plain_router(ctx: ApiContext) -> APIRouter:
    r = APIRouter()

    @r.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        req = parse_body(TokenizeRequest, await request.body())
        ctx.check_model(req.model)
        if req.messages is not None:
            tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
            ids = render_messages(ctx, req.messages, req.reasoning_effort, tools).token_ids
        else:
            ids = ctx.tokenizer.encode(req.prompt or "")
        strs = [ctx.tokenizer.decode([t]) for t in ids] if req.return_token_strs else None
        return {
            "count": len(ids),
            "max_model_len": ctx.engine.max_model_len,
            "tokens": list(ids),
            "token_strs": strs,
        }

    @r.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        req = parse_body(DetokenizeRequest, await request.body())
        ctx.check_model(req.model)
        check_token_ids(req.tokens, ctx.tokenizer.vocab_size, "tokens")
        return {"prompt": ctx.tokenizer.decode(req.tokens)}

    @r.get("/health")
    async def health() -> Response:
        if ctx.engine.is_dead:
            return JSONResponse({"status": "engine dead"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @r.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=PROMETHEUS_TYPE)

    return r

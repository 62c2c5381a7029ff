"""create_app(engine, config, tokenizer) -> FastAPI: routes, auth, error mapping, health, metrics.

Owns the HTTP surface: which path goes to which handler, the guard every request passes
(`api/guard.py`: the bearer key on every route but /health, the body-size limit), and the rule
that every failure leaves as an OpenAI-shaped error (400 for bad input, never a 422; 405 with
`Allow`; 499 quietly for a client that left mid-body; 500 only for our own bugs). Knows nothing
of torch or the engine's insides; handlers live in chat.py, completions.py and responses.py (whose
service, store and tools close with the app).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gptoss_serve.api.bodies import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionResponse,
    DetokenizeResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
)
from gptoss_serve.api.chat import create_chat_completion, render_messages
from gptoss_serve.api.completions import create_completion
from gptoss_serve.api.context import ApiContext, check_token_ids, off_loop
from gptoss_serve.api.guard import Guard, error_response, open_paths
from gptoss_serve.api.metrics import ServerMetrics
from gptoss_serve.api.openapi import install, request_body, responses_of, schema_ref
from gptoss_serve.api.responses import closing, responses_router, responses_service
from gptoss_serve.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    parse_body,
    validation_to_error,
)
from gptoss_serve.config import ServerConfig
from gptoss_serve.errors import EngineDeadError, GptOssServeError

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
    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes,
                       public_paths=open_paths(config.public_metrics))
    app.include_router(_v1_router(ctx))
    app.include_router(responses_router(responses))
    app.include_router(_plain_router(ctx))
    install(app)
    return app


# ---- errors ----------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    async def ours(_: Request, exc: GptOssServeError) -> JSONResponse:
        return error_response(exc)

    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_to_error(list(exc.errors())))

    async def http(_: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        err = GptOssServeError(str(exc.detail), code=code)
        err.status, err.error_type = exc.status_code, "invalid_request_error"
        response = error_response(err)
        response.headers.update(exc.headers or {})  # `Allow` of a 405
        return response

    async def left(_: Request, exc: ClientDisconnect) -> Response:
        log.debug("client left before its request body arrived")
        return Response(status_code=499)

    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(GptOssServeError(f"internal error: {type(exc).__name__}"))

    app.add_exception_handler(GptOssServeError, ours)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(ClientDisconnect, left)
    app.add_exception_handler(Exception, bug)


# ---- /v1 routes ------------------------------------------------------------------------------
def _v1_router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/chat/completions", openapi_extra=request_body(ChatCompletionRequest),
            responses=responses_of(ChatCompletionResponse, stream=ChatCompletionChunk))
    async def chat(request: Request) -> Response:
        return await create_chat_completion(ctx, request)

    @r.post("/completions", openapi_extra=request_body(CompletionRequest),
            responses=responses_of(CompletionResponse, stream=CompletionChunk))
    async def completions(request: Request) -> Response:
        return await create_completion(ctx, request)

    @r.get("/models", responses=responses_of(ModelList))
    async def models() -> Response:
        cards = [_model_card(ctx, n) for n in ctx.config.served_model_names]
        return JSONResponse(ModelList(object="list", data=cards).body())

    @r.get("/models/{model_id:path}", responses=responses_of(ModelCard))
    async def model(model_id: str) -> Response:
        ctx.check_model(model_id)
        return JSONResponse(_model_card(ctx, model_id).body())

    return r


def _model_card(ctx: ApiContext, name: str) -> ModelCard:
    return ModelCard(id=name, object="model", created=_STARTED, owned_by="gptoss-serve",
                     root=name, parent=None, max_model_len=ctx.engine.max_model_len)


_STARTED = int(time.time())


# ---- tokenizer, health, metrics ---------------------------------------------------------------
def _plain_router(ctx: ApiContext) -> APIRouter:
    r = APIRouter()

    @r.post("/tokenize", openapi_extra=request_body(TokenizeRequest),
            responses=responses_of(TokenizeResponse))
    async def tokenize(request: Request) -> Response:
        req = await off_loop(parse_body, TokenizeRequest, await request.body())
        ctx.check_model(req.model)
        return JSONResponse((await off_loop(_tokenize, ctx, req)).body())

    @r.post("/detokenize", openapi_extra=request_body(DetokenizeRequest),
            responses=responses_of(DetokenizeResponse))
    async def detokenize(request: Request) -> Response:
        req = await off_loop(parse_body, DetokenizeRequest, await request.body())
        ctx.check_model(req.model)
        check_token_ids(req.tokens, ctx.tokenizer.vocab_size, "tokens")
        text = await off_loop(ctx.tokenizer.decode, req.tokens)
        return JSONResponse(DetokenizeResponse(prompt=text).body())

    health_doc = {"content": {"application/json": {"schema": schema_ref(HealthResponse)}}}
    health_responses: dict[int | str, Any] = {
        200: {"description": "The engine is running.", **health_doc},
        503: {"description": "The engine died.", **health_doc}}

    @r.get("/health", responses=health_responses)
    async def health() -> Response:
        if ctx.engine.is_dead:
            headers = {"Retry-After": str(EngineDeadError.retry_after)}
            body = HealthResponse(status="engine dead").body()
            return JSONResponse(body, status_code=503, headers=headers)
        return JSONResponse(HealthResponse(status="ok").body())

    @r.get("/metrics", response_class=PlainTextResponse,
           responses={200: {"description": "Prometheus text format 0.0.4."}})
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=PROMETHEUS_TYPE)

    return r


def _tokenize(ctx: ApiContext, req: TokenizeRequest) -> TokenizeResponse:
    if req.messages is not None:
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        ids = render_messages(ctx, req.messages, req.reasoning_effort, tools).token_ids
    else:
        ids = ctx.tokenizer.encode(req.prompt or "")
    strs = [ctx.tokenizer.decode([t]) for t in ids] if req.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=ctx.engine.max_model_len,
                            tokens=list(ids), token_strs=strs)


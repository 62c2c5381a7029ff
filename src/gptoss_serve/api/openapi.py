"""The OpenAPI document: each route's request body and responses declared from pydantic models.

The handlers read and validate their bodies themselves (`schemas.parse_body`, off the event loop,
with our 400s) and send `responses.py` models as JSON or server-sent events, so FastAPI cannot
see the models; `request_body(Model)` declares a route's body (`openapi_extra`),
`responses_of(Model, stream=Chunk)` its 200 (JSON, and the object of each event of a stream) and
its errors (`ErrorResponse`), and `install(app)` puts every declared model, with the models it
refers to, into `components.schemas`. Clients and fuzzers (schemathesis, in the tests) read the
result. Knows nothing of handlers or the engine.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gptoss_serve.api.bodies import ErrorResponse

_REF = "#/components/schemas/{model}"
_DECLARED: dict[str, type[BaseModel]] = {}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to `model`'s schema, which `install` puts into the document."""
    _DECLARED[model.__name__] = model
    return {"$ref": _REF.format(model=model.__name__)}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    ref = schema_ref(model)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def responses_of(model: type[BaseModel], stream: type[BaseModel] | None = None,
                 media_type: str = "application/json") -> dict[int | str, Any]:
    """`responses` for a route: 200 sends `model` (as `media_type`), or with `stream` (the
    request's `stream: true`) server-sent events each carrying a `stream` object; every error
    (4XX, 5XX) is an `ErrorResponse`."""
    content: dict[str, Any] = {media_type: {"schema": schema_ref(model)}}
    if stream is not None:
        content["text/event-stream"] = {"schema": schema_ref(stream)}
    error = {"description": "An OpenAI-shaped error.",
             "content": {"application/json": {"schema": schema_ref(ErrorResponse)}}}
    return {200: {"description": "Success.", "content": content}, "4XX": error, "5XX": error}


def _components() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, model in _DECLARED.items():
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out


def install(app: FastAPI) -> None:
    """Serve the document with the declared bodies' models in `components.schemas`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(_components())
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

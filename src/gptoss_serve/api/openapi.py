"""The OpenAPI document: each route's request body declared from its pydantic model.

The handlers read and validate their bodies themselves (`schemas.parse_body`, off the event loop,
with our 400s), so FastAPI cannot see the models; `request_body(Model)` declares one for a route
(`openapi_extra`) and `install(app)` puts every declared model, with the models it refers to,
into `components.schemas`. Clients and fuzzers (schemathesis, in the tests) read the result.
Knows nothing of handlers or the engine.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_DECLARED: dict[str, type[BaseModel]] = {}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    _DECLARED[model.__name__] = model
    ref = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


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

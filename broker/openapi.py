"""The OpenAPI document of the client API, served at /openapi.json.

(Filled in by the hostile-input work of issue 4: generated from the msgspec
Structs in protocol/api.py, never written twice.)"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


def openapi_document() -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "smsdora", "version": "1"}, "paths": {}}


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())

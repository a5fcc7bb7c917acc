"""`GET /docs`: /openapi.json for a person, rendered by Swagger UI.

Swagger UI's files come from the `swagger-ui-bundle-v2` wheel (the
`swagger_ui_bundle` package, kept current with Swagger UI 5, which reads
OpenAPI 3.1; the original `swagger-ui-bundle` stopped at 4.15, which refuses
a 3.1 document) and are served from here: the page works offline, with no
CDN and no inline script.
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from swagger_ui_bundle import swagger_ui_path

from broker.errors import NotFound

ASSETS_PATH = "/docs/static"

# The files the page loads, and what each is.
_ASSET_TYPES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
# Ours, not Swagger UI's: where the document is, and nothing from outside
# (no validator badge, which would call validator.swagger.io).
_INIT = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null
  });
});
"""
_INIT_NAME = "smsdora-docs.js"

_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>smsdora client API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" sizes="32x32" href="{ASSETS_PATH}/favicon-32x32.png">
<link rel="icon" type="image/png" sizes="16x16" href="{ASSETS_PATH}/favicon-16x16.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{ASSETS_PATH}/{_INIT_NAME}"></script>
</body>
</html>
""".encode()

# The assets change only with the installed package: a browser may keep them.
_CACHE = {"Cache-Control": "public, max-age=86400"}


async def docs_page(request: Request) -> Response:
    return Response(_PAGE, media_type="text/html; charset=utf-8")


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name == _INIT_NAME:
        return Response(_INIT, media_type="text/javascript; charset=utf-8", headers=_CACHE)
    media_type = _ASSET_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"Cannot {request.method} {request.url.path}")
    return Response(_asset(name), media_type=media_type, headers=_CACHE)


@functools.cache
def _asset(name: str) -> bytes:
    """Read once: the bundle is 1.5 MB and the same for every request."""
    data: bytes = (swagger_ui_path / name).read_bytes()
    return data

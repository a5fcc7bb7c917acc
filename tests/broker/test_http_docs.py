"""broker/http/docs.py: GET /docs is a page that loads only the broker's own
assets, and each of them answers with its type. The declared routes are
served in process (httpx's ASGI transport); the page needs no database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from swagger_ui_bundle import swagger_ui_path

from broker.http import EXCEPTION_HANDLERS, routes
from broker.http.docs import ASSETS_PATH


class Links(HTMLParser):
    """Every URL the page makes a browser load: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append(value)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://broker.test") as c:
        yield c


TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


async def test_docs_page_loads_only_local_assets_each_with_its_type(
        client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    links = Links()
    links.feed(page.text)
    assert len(links.urls) >= 3, links.urls  # the stylesheet, Swagger UI, our initializer
    for url in links.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not served by the broker"
        assert parts.path.startswith(ASSETS_PATH + "/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        expected = TYPES[parts.path[parts.path.rindex("."):]]
        assert asset.headers["content-type"].split(";")[0] == expected, url
        assert asset.content, url


async def test_the_page_asks_nothing_of_another_host(client: httpx.AsyncClient) -> None:
    """Our initializer points Swagger UI at /openapi.json and turns off its
    online validator badge (validator.swagger.io)."""
    page = (await client.get("/docs")).text
    assert "<script>" not in page  # no inline script: every script is an asset
    scripts = re.findall(r'<script src="([^"]+)"', page)
    init = (await client.get(scripts[-1])).text
    assert 'url: "/openapi.json"' in init
    assert "validatorUrl: null" in init
    assert "http://" not in init and "https://" not in init
    assert "http://" not in page and "https://" not in page


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "nope.js",
                                  "..%2F__init__.py", "swagger-ui-bundle.js.map"])
async def test_only_the_page_s_own_files_are_served(client: httpx.AsyncClient, name: str) -> None:
    """Not the bundle's demo page nor its initializer (both point at the
    petstore on the internet), nor anything else of the package."""
    r = await client.get(f"{ASSETS_PATH}/{name}")
    assert r.status_code == 404
    assert r.json()["statusCode"] == 404


def test_the_bundle_renders_openapi_3_1() -> None:
    """Swagger UI reads OpenAPI 3.1 from 5.0 on; 4.x refuses a 3.1 document
    ("does not specify a valid version field"), and /openapi.json is 3.1."""
    version = re.fullmatch(r"swagger-ui-(\d+)\.(\d+)\.(\d+)", swagger_ui_path.name)
    assert version is not None, swagger_ui_path
    assert int(version.group(1)) >= 5

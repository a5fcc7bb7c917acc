"""broker/http/openapi.py: how a declaration becomes an operation, on small
made-up endpoints; and that the real document is whole. Pure."""

from __future__ import annotations

import http
from typing import Any

import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response

from broker.http.declaration import Endpoint, Wrap
from broker.http.endpoints import ENDPOINTS
from broker.http.openapi import document
from broker.http.params import Integer
from protocol.api import MAX_TTL_S


class Thing(msgspec.Struct, frozen=True):
    name: str
    size: int | None = None


class Secret(msgspec.Struct, frozen=True):
    hidden: str


async def handler(request: Request) -> Response:
    return Response(b"")


def endpoint(**kw: Any) -> Endpoint:
    fields: dict[str, Any] = {"method": "GET", "path": "/things", "handler": handler,
                              "operation_id": "op", "summary": "Sum", "answer": "Ans",
                              "scope": None}
    return Endpoint(**{**fields, **kw})


def operation(e: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = document([e])["paths"][e.path][e.method.lower()]
    return op


def success(e: Endpoint) -> dict[str, Any]:
    content: dict[str, Any] = operation(e)["responses"][str(e.status)]["content"]
    return content


def test_the_struct_bare_in_an_envelope_or_in_a_list() -> None:
    ref = {"$ref": "#/components/schemas/Thing"}
    assert success(endpoint(response=Thing)) == {"application/json": {"schema": ref}}
    one = success(endpoint(response=Thing, wrap=Wrap.ONE, status=201))["application/json"]
    assert one["schema"] == {"allOf": [{"$ref": "#/components/schemas/Envelope"}, {
        "type": "object", "properties": {"statusCode": {"const": 201}, "data": ref}}]}
    many = success(endpoint(response=Thing, wrap=Wrap.LIST))["application/json"]
    assert many["schema"]["allOf"][1]["properties"]["data"] == {"type": "array", "items": ref}


def test_no_struct_is_a_json_object_or_a_string() -> None:
    assert success(endpoint()) == {"application/json": {"schema": {"type": "object"}}}
    assert success(endpoint(media_type="text/html")) == {
        "text/html": {"schema": {"type": "string"}}}


def test_errors_are_the_shared_responses_and_400_431_500_503_always() -> None:
    """400: a request that is not valid HTTP can come to any path; 431: a
    head over its limit, answered before any route."""
    responses = operation(endpoint(response=Thing, errors=(401, 405), scope=None))["responses"]
    assert set(responses) == {"200", "400", "401", "405", "431", "500", "503"}
    assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert responses["503"] == {"$ref": "#/components/responses/ServiceUnavailable"}


def test_a_route_with_a_key_can_be_throttled_and_one_with_a_body_can_time_out() -> None:
    """429: the failure throttle and the account's budget stand before every
    route that takes a key; 408: a body's deadline, on routes that read one."""
    keyed = operation(endpoint(response=Thing, errors=(401,), scope="messages:read"))
    assert "429" in keyed["responses"] and "408" not in keyed["responses"]
    body = operation(endpoint(response=Thing, errors=(401, 413), scope="messages:send"))
    assert {"408", "429"} <= set(body["responses"])
    assert "429" not in operation(endpoint(response=Thing, scope=None))["responses"]


def test_an_also_status_is_the_struct_or_the_error_shape() -> None:
    e = endpoint(response=Thing, errors=(405,), also=((503, "Degraded."),))
    answer = operation(e)["responses"]["503"]
    assert answer["description"] == "Degraded."
    (first, second) = answer["content"]["application/json"]["schema"]["anyOf"]
    assert first == {"$ref": "#/components/schemas/Thing"}
    assert second["allOf"][1]["properties"] == {
        "statusCode": {"const": 503}, "error": {"const": "Service Unavailable"}}


def test_security_is_the_scope_on_both_schemes_or_none() -> None:
    assert operation(endpoint())["security"] == []
    assert operation(endpoint(scope="messages:read"))["security"] == [
        {"apiKey": ["messages:read"]}, {"bearerKey": ["messages:read"]}]


def test_body_with_its_example_as_a_client_writes_it() -> None:
    op = operation(endpoint(method="POST", body=Thing, example=Thing(name="a")))
    assert op["requestBody"] == {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Thing"}, "example": {"name": "a"}}}}


def test_params_are_documented_in_declaration_order() -> None:
    a = Integer("a", "A.", low=1, high=2, default=1)
    b = Integer("b", "B.", low=1, high=2, default=1)
    assert [p["name"] for p in operation(endpoint(params=(b, a)))["parameters"]] == ["b", "a"]
    assert "parameters" not in operation(endpoint())


def test_an_undocumented_endpoint_and_its_structs_stay_out() -> None:
    doc = document([endpoint(response=Thing),
                    endpoint(path="/secret", response=Secret, documented=False)])
    assert list(doc["paths"]) == ["/things"]
    assert "Secret" not in doc["components"]["schemas"]
    assert {"Thing", "Envelope", "ErrorBody"} <= set(doc["components"]["schemas"])


# --- the real document ------------------------------------------------------------------


DOCUMENT = document(ENDPOINTS)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_every_reference_of_the_document_resolves() -> None:
    assert refs(DOCUMENT)
    for ref in refs(DOCUMENT):
        node: Any = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, ref
            node = node[part]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 500, 503])
def test_each_shared_error_names_its_status_and_phrase(status: int) -> None:
    name = http.HTTPStatus(status).name.title().replace("_", "")
    schema = DOCUMENT["components"]["responses"][name]["content"]["application/json"]["schema"]
    assert schema["allOf"][1]["properties"] == {
        "statusCode": {"const": status}, "error": {"const": http.HTTPStatus(status).phrase}}


def test_the_document_is_openapi_3_1_and_says_the_ttl_bound() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    assert str(MAX_TTL_S) in DOCUMENT["info"]["description"]

"""The OpenAPI 3.1 document of the client API (contract section 3), made
from the endpoint declarations (endpoints.py): no path is written here.

Bodies are never written twice: every request and response schema comes from
the msgspec Structs in protocol/api.py through `msgspec.json.schema_components`.
What this module adds is only what a Struct cannot say: the envelope's `data`
for each read, and that an error with status N carries `statusCode` N and N's
reason phrase. Every error response of every operation is one `ErrorBody`
under that constraint (an `also` status, /health's 503, may instead be the
endpoint's own body, as the contract has it).
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from typing import Any

import msgspec

from broker.http.declaration import Endpoint, Wrap
from broker.http.responses import JSON
from protocol.api import MAX_BODY_BYTES, MAX_TTL_S, SCOPES, Envelope, ErrorBody

_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"
# Any endpoint can answer these: a request that is not valid HTTP (a
# malformed header, answered before any route: broker/ops/server.py); an
# unexpected fault; the database, the request deadline or shutting down.
_ALWAYS = (400, 431, 500, 503)

# Every error status an operation of this API can answer, and when.
_ERRORS: dict[int, str] = {
    400: "Bad request: invalid body, field, parameter or header, or a request that is not "
         "valid HTTP (\"Invalid HTTP request received.\"); for a send also "
         "\"No eligible device available\" (no phone connected and no ttl to wait with).",
    401: "\"Invalid API key\", \"API key expired\" or \"API key revoked\".",
    403: "Missing scope, \"Rate limit exceeded\" (with Retry-After) or a plan limit.",
    404: "Unknown message, device, key or other resource, or one of another account.",
    405: "Method not allowed (the Allow header lists the allowed ones).",
    409: "The Idempotency-Key was used with another body within 24 hours; or the change "
         "cannot be made in the resource's state (a message past cancelling, a device with "
         "messages to delete, an SMS Gateway phone's token to rotate).",
    408: "The body did not arrive within its deadline (SMSDORA_BODY_TIMEOUT).",
    413: f"Request body over {MAX_BODY_BYTES // 1024} KiB.",
    429: "Too many failed credentials from this address, or the account is over its "
         "request budget or its share of the database pool (with Retry-After).",
    431: "Request head over its limit (SMSDORA_MAX_HEADER_BYTES).",
    500: "Unexpected fault, logged with the x-request-id of the response.",
    503: "Database unavailable, shutting down, or the account's queue is full.",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    403: {"Retry-After": {"description": "Seconds until the rate limit lets a request through "
                                         "(only with \"Rate limit exceeded\").",
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    405: {"Allow": {"description": "The methods the path takes.", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds after which a retry may succeed.",
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    503: {"Retry-After": {"description": "Seconds after which a retry may succeed (when the "
                                         "account's queue is full).",
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}


def _ref(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {"$ref": _SCHEMAS + struct.__name__}


def _content(media_type: str, schema: dict[str, Any], description: str,
             headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {media_type: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error_schema(status: int) -> dict[str, Any]:
    """ErrorBody with this status's own statusCode and reason phrase."""
    return {"allOf": [_ref(ErrorBody), {"type": "object", "properties": {
        "statusCode": {"const": status},
        "error": {"const": http.HTTPStatus(status).phrase},
    }}]}


def _error_name(status: int) -> str:
    return http.HTTPStatus(status).name.title().replace("_", "")


def _success_schema(e: Endpoint) -> dict[str, Any]:
    if e.response is None:
        return {"type": "object"} if e.media_type == JSON else {"type": "string"}
    if e.wrap is Wrap.BARE:
        return _ref(e.response)
    data = _ref(e.response) if e.wrap is Wrap.ONE else {"type": "array",
                                                         "items": _ref(e.response)}
    # `{"statusCode": status, "data": …}`: the Envelope Struct with its `data` named.
    return {"allOf": [_ref(Envelope), {"type": "object", "properties": {
        "statusCode": {"const": e.status}, "data": data}}]}


def _responses(e: Endpoint) -> dict[str, Any]:
    out = {str(e.status): _content(e.media_type, _success_schema(e), e.answer)}
    also = dict(e.also)
    statuses = {*e.errors, *_ALWAYS}
    if e.scope is not None:
        statuses.add(429)  # the failure throttle and the account's budget
    if 413 in e.errors:
        statuses.add(408)  # a body: its deadline
    for status in sorted(statuses):
        if status in also:
            out[str(status)] = _content(JSON, {"anyOf": [_success_schema(e),
                                                         _error_schema(status)]},
                                        also[status])
        else:
            out[str(status)] = {"$ref": _RESPONSES + _error_name(status)}
    return out


def _operation(e: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": e.operation_id, "summary": e.summary,
                          # OpenAPI 3.1 allows role names for non-OAuth schemes:
                          # the scope each needs.
                          "security": ([{"apiKey": [e.scope]}, {"bearerKey": [e.scope]}]
                                       if e.scope else [])}
    if e.params:
        op["parameters"] = [p.openapi() for p in e.params]
    if e.body is not None:
        content: dict[str, Any] = {"schema": _ref(e.body)}
        if e.example is not None:
            # What a client writes: the optional fields it leaves out, left out.
            example = msgspec.to_builtins(e.example)
            content["example"] = {k: v for k, v in example.items() if v is not None}
        op["requestBody"] = {"required": True, "content": {JSON: content}}
    op["responses"] = _responses(e)
    return op


def paths(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        if e.documented:
            out.setdefault(e.path, {})[e.method.lower()] = _operation(e)
    return out


def _structs(endpoints: Sequence[Endpoint]) -> list[type[msgspec.Struct]]:
    found: dict[type[msgspec.Struct], None] = {Envelope: None, ErrorBody: None}
    for e in endpoints:
        for struct in (e.body, e.response):
            if struct is not None and e.documented:
                found[struct] = None
    return list(found)


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The whole document of these endpoints."""
    _, schemas = msgspec.json.schema_components(_structs(endpoints),
                                                ref_template=_SCHEMAS + "{name}")
    scopes = ", ".join(f"`{s}`" for s in SCOPES)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smsdora client API", "version": "1",
            "description": (
                "Send SMS through the account's Android phones and read their state. "
                f"Scopes: {scopes}; `keys:write` implies the others. Every error is "
                "`{\"statusCode\": N, \"message\": \"…\", \"error\": \"<reason phrase>\"}`. "
                f"`ttl` is at most {MAX_TTL_S} s."
            ),
        },
        "paths": paths(endpoints),
        "components": {
            "schemas": schemas,
            "responses": {_error_name(s): _content(JSON, _error_schema(s), _ERRORS[s],
                                                   _ERROR_HEADERS.get(s))
                          for s in _ERRORS},
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                           "description": "`smsgw_<8 hex>_<secret>`"},
                "bearerKey": {"type": "http", "scheme": "bearer",
                              "description": "The same API key as `Authorization: Bearer KEY`."},
            },
        },
    }

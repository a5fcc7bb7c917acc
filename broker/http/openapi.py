"""The OpenAPI 3.1 document of the client API (contract section 3), served at
/openapi.json.

Bodies are never written twice: every request and response schema comes from
the msgspec Structs in protocol/api.py through `msgspec.json.schema_components`.
What this module adds is only what a Struct cannot say: which Struct answers
which route and status, the envelope's `data` for each read, and that an error
with status N carries `statusCode` N and N's reason phrase. Every error
response of every operation is one `ErrorBody` under that constraint (a 503
from /health may also be its own degraded body, as the contract has it).

The document is built once, on first use, and served as the same bytes.
"""

from __future__ import annotations

import functools
import http
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from protocol import lifecycle
from protocol.api import (MAX_BODY_BYTES, MAX_TTL_S, SCOPES, CreatedDevice, CreateDeviceRequest,
                          DeviceInfo, Envelope, ErrorBody, MessageData, MessageDetail,
                          SendRequest, SendResponse)

JSON = "application/json"
_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"
_MAX_LIMIT = 100  # GET /messages?limit= (broker/http_api.py)


class HealthBody(msgspec.Struct, frozen=True):
    """`GET /health` (contract section 3, Operations).

    http_api.health builds this body as a dict; the Struct is here so that the
    document is still generated, and belongs in protocol/api.py beside the rest.
    """

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    node: str
    devicesOnline: int
    uptimeSeconds: int


_STRUCTS = (SendRequest, SendResponse, MessageData, MessageDetail, DeviceInfo,
            CreateDeviceRequest, CreatedDevice, Envelope, ErrorBody, HealthBody)

# Every error status an operation of this API can answer, and when.
_ERRORS: dict[int, str] = {
    400: "Bad request: invalid body, field, parameter or header; "
         "for a send also \"No eligible device available\".",
    401: "\"Invalid API key\", \"API key expired\" or \"API key revoked\".",
    403: "Missing scope, \"Rate limit exceeded\" (with Retry-After) or a plan limit.",
    404: "Unknown message, or one of another account.",
    405: "Method not allowed (the Allow header lists the allowed ones).",
    409: "The Idempotency-Key was used with another body within 24 hours.",
    413: f"Request body over {MAX_BODY_BYTES // 1024} KiB.",
    500: "Unexpected fault, logged with the x-request-id of the response.",
    503: "Database unavailable, shutting down, or the account's queue is full.",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    403: {"Retry-After": {"description": "Seconds until the rate limit lets a request through "
                                         "(only with \"Rate limit exceeded\").",
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    405: {"Allow": {"description": "The methods the path takes.", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds after which a retry may succeed (when the "
                                         "account's queue is full).",
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _SCHEMAS + name}


def _json(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _enveloped(status: int, data: dict[str, Any]) -> dict[str, Any]:
    """`{"statusCode": status, "data": …}`: the Envelope Struct with its `data` named."""
    return {"allOf": [_ref("Envelope"), {"type": "object", "properties": {
        "statusCode": {"const": status}, "data": data}}]}


def _error_schema(status: int) -> dict[str, Any]:
    """ErrorBody with this status's own statusCode and reason phrase."""
    return {"allOf": [_ref("ErrorBody"), {"type": "object", "properties": {
        "statusCode": {"const": status},
        "error": {"const": http.HTTPStatus(status).phrase},
    }}]}


def _error_response(status: int) -> dict[str, Any]:
    return _json(_error_schema(status), _ERRORS[status], _ERROR_HEADERS.get(status))


def _errors(*statuses: int) -> dict[str, Any]:
    """References to the shared error responses; 500 and 503 can answer anything."""
    return {str(s): {"$ref": _RESPONSES + http.HTTPStatus(s).name.title().replace("_", "")}
            for s in sorted({*statuses, 500, 503})}


def _security(scope: str) -> list[dict[str, list[str]]]:
    # OpenAPI 3.1 allows role names for non-OAuth schemes: the scope each needs.
    return [{"apiKey": [scope]}, {"bearerKey": [scope]}]


def _json_body(name: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(name), "example": example}}}


def _paths() -> dict[str, Any]:
    message_id = {"name": "message_id", "in": "path", "required": True,
                  "description": "The id the send answered with.",
                  "schema": {"type": "string", "format": "uuid"}}
    idempotency_key = {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "The same key with the same body within 24 hours answers the first "
                       "response again and sends nothing; with another body, 409.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
    # `?status=&limit=&cursor=` (contract section 3): an empty value is no value.
    listing = [
        {"name": "status", "in": "query", "required": False, "allowEmptyValue": True,
         "description": "Only messages in this status.",
         "schema": {"type": "string", "enum": list(lifecycle.STATUSES)}},
        {"name": "limit", "in": "query", "required": False, "allowEmptyValue": True,
         "description": "At most this many messages (default 20).",
         "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_LIMIT, "default": 20}},
        {"name": "cursor", "in": "query", "required": False, "allowEmptyValue": True,
         "description": "The `nextCursor` of the previous page.",
         "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"}},
    ]
    return {
        "/messages/send": {"post": {
            "operationId": "sendMessage", "summary": "Queue one SMS on one of the account's phones",
            "security": _security("messages:send"), "parameters": [idempotency_key],
            "requestBody": _json_body("SendRequest", {"recipient": "+212600000000",
                                                      "message": "Your code is 4829"}),
            "responses": {"201": _json(_ref("SendResponse"),
                                       "Stored and written to the phone's socket "
                                       "(`dispatching`), or waiting for room (`queued`)."),
                          **_errors(400, 401, 403, 405, 409, 413)},
        }},
        "/messages/{message_id}": {"get": {
            "operationId": "getMessage", "summary": "One message with its status history",
            "security": _security("messages:read"), "parameters": [message_id],
            "responses": {"200": _json(_enveloped(200, _ref("MessageDetail")), "The message."),
                          **_errors(401, 403, 404, 405)},
        }},
        "/messages": {"get": {
            "operationId": "listMessages", "summary": "The account's messages, newest first",
            "security": _security("messages:read"), "parameters": listing,
            "responses": {"200": _json(_enveloped(200, {"type": "array",
                                                        "items": _ref("MessageData")}),
                                       "A page; `nextCursor` is there when more follow."),
                          **_errors(400, 401, 403, 405)},
        }},
        "/devices": {
            "get": {
                "operationId": "listDevices", "summary": "The account's phones and their presence",
                "security": _security("devices:read"),
                "responses": {"200": _json(_enveloped(200, {"type": "array",
                                                            "items": _ref("DeviceInfo")}),
                                           "Every device of the account."),
                              **_errors(401, 403, 405)},
            },
            "post": {
                "operationId": "createDevice",
                "summary": "Register a phone; its token is shown only in this response",
                "security": _security("devices:write"),
                "requestBody": _json_body("CreateDeviceRequest", {"name": "My Samsung S24"}),
                "responses": {"201": _json(_enveloped(201, _ref("CreatedDevice")),
                                           "The device and its token."),
                              **_errors(400, 401, 403, 405, 413)},
            },
        },
        "/health": {"get": {
            "operationId": "health", "summary": "Liveness and database reachability",
            "security": [],
            "responses": {
                "200": _json(_ref("HealthBody"), "The database answers."),
                "405": {"$ref": _RESPONSES + "MethodNotAllowed"},
                "500": {"$ref": _RESPONSES + "InternalServerError"},
                # Degraded, or (in the error shape) shutting down or past the
                # request deadline.
                "503": _json({"anyOf": [_ref("HealthBody"), _error_schema(503)]},
                             "Degraded: the database cannot be reached."),
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus text exposition format",
            "security": [],
            "responses": {"200": {"description": "The metrics.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(405)},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document."),
                          **_errors(405)},
        }},
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document, built once. Callers must not change it."""
    _, schemas = msgspec.json.schema_components(_STRUCTS, ref_template=_SCHEMAS + "{name}")
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
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "responses": {http.HTTPStatus(s).name.title().replace("_", ""): _error_response(s)
                          for s in _ERRORS},
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                           "description": "`smsgw_<8 hex>_<secret>`"},
                "bearerKey": {"type": "http", "scheme": "bearer",
                              "description": "The same API key as `Authorization: Bearer KEY`."},
            },
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    return msgspec.json.encode(openapi_document())


async def openapi_endpoint(request: Request) -> Response:
    return Response(_document_bytes(), media_type=JSON)

"""Every HTTP endpoint of the client API, declared once (issue 9): the
Starlette routes (`routes()`), the router-less hot paths (`fast_http()`) and
/openapi.json (`openapi_endpoint`) are all made from `ENDPOINTS`."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from broker.http import account, keys
from broker.http.declaration import Endpoint, Handler, Wrap
from broker.http.devices import (
    DEVICE_ID,
    DEVICES_CURSOR,
    DEVICES_LIMIT,
    create_code,
    create_device,
    delete_device,
    get_device,
    list_devices,
    rotate_token,
    update_device,
)
from broker.http.docs import ASSETS_PATH, docs_asset, docs_page
from broker.http.inbox import INBOX_ENDPOINTS
from broker.http.messages import (
    CURSOR,
    DEVICE,
    IDEMPOTENCY_KEY,
    LIMIT,
    MESSAGE_ID,
    RECIPIENT,
    SINCE,
    STATUS,
    UNTIL,
    cancel_message,
    get_message,
    list_messages,
    send_message,
    send_message_asgi,
)
from broker.http.openapi import document
from broker.http.ops import health, metrics_endpoint
from broker.http.responses import JSON
from broker.http.webhooks import WEBHOOK_ENDPOINTS
from protocol.api import (
    AccountInfo,
    CreatedDevice,
    CreateDeviceRequest,
    CreateKeyRequest,
    DeviceInfo,
    DeviceToken,
    HealthBody,
    IssuedKey,
    KeyInfo,
    MessageDetail,
    MessageItem,
    PairingCode,
    SendRequest,
    SendResponse,
    UpdateDeviceRequest,
)


async def openapi_endpoint(request: Request) -> Response:
    return Response(_document_bytes(), media_type=JSON)


@functools.cache
def _document_bytes() -> bytes:
    """Built on first use, then served as the same bytes."""
    return msgspec.json.encode(document(ENDPOINTS))


ENDPOINTS: tuple[Endpoint, ...] = (
    # Before /messages/{message_id}: the router takes the first full match.
    Endpoint(
        "POST", "/messages/send", send_message, "sendMessage",
        "Queue one SMS on one of the account's phones",
        "Stored and written to the phone's socket (`dispatching`), or waiting for room "
        "(`queued`).",
        scope="messages:send", status=201, body=SendRequest,
        example=SendRequest(recipient="+212600000000", message="Your code is 4829"),
        params=(IDEMPOTENCY_KEY,), response=SendResponse,
        errors=(400, 401, 403, 405, 409, 413), asgi=send_message_asgi),
    Endpoint(
        "GET", "/messages/{message_id}", get_message, "getMessage",
        "One message with its status history", "The message.",
        scope="messages:read", params=(MESSAGE_ID,), response=MessageDetail,
        wrap=Wrap.ONE, errors=(401, 403, 404, 405)),
    Endpoint(
        "GET", "/messages", list_messages, "listMessages",
        "The account's messages, newest first",
        "A page; `nextCursor` is there when more follow.",
        scope="messages:read", params=(STATUS, DEVICE, RECIPIENT, SINCE, UNTIL, LIMIT, CURSOR),
        response=MessageItem, wrap=Wrap.LIST, errors=(400, 401, 403, 405)),
    Endpoint(
        "POST", "/messages/{message_id}/cancel", cancel_message, "cancelMessage",
        "Cancel a message no phone can have sent yet",
        "The message, now `failed` with error `cancelled`; its phone was told to drop it. "
        "409 once it is `sending` or later, or listed by an SMS Gateway phone (which sends "
        "what it lists).",
        scope="messages:send", params=(MESSAGE_ID,), response=MessageDetail, wrap=Wrap.ONE,
        errors=(401, 403, 404, 405, 409)),
    Endpoint(
        "GET", "/devices", list_devices, "listDevices",
        "The account's phones and their presence",
        "A page of the account's devices, oldest first; `nextCursor` when more follow.",
        scope="devices:read", params=(DEVICES_LIMIT, DEVICES_CURSOR), response=DeviceInfo,
        wrap=Wrap.LIST, errors=(400, 401, 403, 405)),
    Endpoint(
        "POST", "/devices", create_device, "createDevice",
        "Register a phone; its token is shown only in this response",
        "The device and its token.",
        scope="devices:write", status=201, body=CreateDeviceRequest,
        example=CreateDeviceRequest(name="My Samsung S24"), response=CreatedDevice,
        wrap=Wrap.ONE, errors=(400, 401, 403, 405, 413)),
    # Before /devices/{device_id}: the router takes the first full match.
    Endpoint(
        "POST", "/devices/codes", create_code, "createPairingCode",
        "A one-time code an SMS Gateway app registers with (By code)",
        "The code: 6 characters, single use, valid 10 minutes; and the server URL the app "
        "is given.", scope="devices:write", status=201, response=PairingCode, wrap=Wrap.ONE,
        errors=(401, 403, 405)),
    Endpoint(
        "GET", "/devices/{device_id}", get_device, "getDevice",
        "One phone and its presence", "The device.", scope="devices:read",
        params=(DEVICE_ID,), response=DeviceInfo, wrap=Wrap.ONE, errors=(401, 403, 404, 405)),
    Endpoint(
        "PATCH", "/devices/{device_id}", update_device, "updateDevice",
        "Rename a phone, change its send rate, deactivate or reactivate it",
        "The device. Deactivated: its token is refused and its connection dropped; the jobs "
        "an SMS Gateway phone listed fail (`device deactivated`), the others go to another "
        "phone. Reactivating is within the plan's device limit (403).",
        scope="devices:write", params=(DEVICE_ID,), body=UpdateDeviceRequest,
        example=UpdateDeviceRequest(name="Office phone", sendRate=20), response=DeviceInfo,
        wrap=Wrap.ONE, errors=(400, 401, 403, 404, 405, 413)),
    Endpoint(
        "DELETE", "/devices/{device_id}", delete_device, "deleteDevice",
        "Delete a phone that never handled a message",
        "The device as it was; its token is refused and its connection dropped. A phone "
        "that has messages or received SMS is kept (409): deactivate it instead.",
        scope="devices:write", params=(DEVICE_ID,), response=DeviceInfo, wrap=Wrap.ONE,
        errors=(401, 403, 404, 405, 409)),
    Endpoint(
        "POST", "/devices/{device_id}/rotate-token", rotate_token, "rotateDeviceToken",
        "A new token for a WebSocket phone, shown only in this response",
        "The new token; the old one is refused at once and its connection dropped. An SMS "
        "Gateway phone's token cannot be rotated (409): the app registers again instead.",
        scope="devices:write", params=(DEVICE_ID,), response=DeviceToken, wrap=Wrap.ONE,
        errors=(401, 403, 404, 405, 409)),
    Endpoint(
        "POST", "/keys", keys.create_key, "createKey",
        "Create an API key of the account; the key is shown only in this response",
        "The key, as `smsdora keys create --json` prints it.", scope="keys:write", status=201,
        body=CreateKeyRequest,
        example=CreateKeyRequest(name="billing", scopes=["messages:send"], rateLimit=60),
        response=IssuedKey, wrap=Wrap.ONE, errors=(400, 401, 403, 405, 413)),
    Endpoint(
        "GET", "/keys", keys.list_keys, "listKeys", "The account's API keys, oldest first",
        "A page of keys, never their secrets; `nextCursor` when more follow.",
        scope="keys:write", params=(keys.KEYS_LIMIT, keys.KEYS_CURSOR), response=KeyInfo,
        wrap=Wrap.LIST, errors=(400, 401, 403, 405)),
    Endpoint(
        "GET", "/keys/{key_id}", keys.get_key, "getKey", "One API key, without its secret",
        "The key.", scope="keys:write", params=(keys.KEY_ID,), response=KeyInfo,
        wrap=Wrap.ONE, errors=(401, 403, 404, 405)),
    Endpoint(
        "POST", "/keys/{key_id}/revoke", keys.revoke_key, "revokeKey",
        "Revoke an API key; it stops working at once", "The key, revoked.",
        scope="keys:write", params=(keys.KEY_ID,), response=KeyInfo, wrap=Wrap.ONE,
        errors=(401, 403, 404, 405)),
    Endpoint(
        "POST", "/keys/{key_id}/rotate", keys.rotate_key, "rotateKey",
        "A new secret for an API key (same id, name, scopes, limit and expiry)",
        "The new key, shown only in this response; the old secret stopped working.",
        scope="keys:write", params=(keys.KEY_ID,), response=IssuedKey, wrap=Wrap.ONE,
        errors=(401, 403, 404, 405)),
    Endpoint(
        "GET", "/account", account.get_account, "getAccount",
        "The account's plan, this month's usage and its devices",
        "The account.", scope="messages:read", response=AccountInfo, wrap=Wrap.ONE,
        errors=(401, 403, 405)),
    *WEBHOOK_ENDPOINTS,
    *INBOX_ENDPOINTS,
    Endpoint(
        "GET", "/health", health, "health", "Liveness and database reachability",
        "The database answers. `node`, `devicesOnline` and `uptimeSeconds` only with "
        "`Authorization: Bearer` and the metrics token.", scope=None, response=HealthBody,
        errors=(405,),
        # Degraded; or, in the error shape, shutting down or past the deadline.
        also=((503, "Degraded: the database cannot be reached."),)),
    Endpoint(
        "GET", "/metrics", metrics_endpoint, "metrics", "Prometheus text exposition format",
        "The metrics, for `Authorization: Bearer` and the metrics token (SMSDORA_METRICS_TOKEN);"
        " without that setting, 404: they are on the metrics listener.", scope=None,
        media_type="text/plain", errors=(401, 404, 405)),
    Endpoint(
        "GET", "/openapi.json", openapi_endpoint, "openapi", "This document",
        "The OpenAPI document.", scope=None, errors=(405,)),
    # In the document too: it is the page a person is sent to, and answers
    # like any other path (405, request ids); its assets are not part of the API.
    Endpoint(
        "GET", "/docs", docs_page, "docs", "This document for a person (Swagger UI)",
        "An HTML page that renders /openapi.json; it loads only the assets below "
        f"{ASSETS_PATH}.", scope=None, media_type="text/html", errors=(405,)),
    Endpoint(
        "GET", ASSETS_PATH + "/{name}", docs_asset, "docsAsset",
        "A file of the /docs page", "The file (CSS, JavaScript or PNG).", scope=None,
        media_type="application/octet-stream",
        errors=(404, 405), documented=False),
)


def routes(endpoints: Sequence[Endpoint] = ENDPOINTS) -> list[Route]:
    """One Starlette Route per path, in declaration order; a path with more
    than one method is one route, so that its 405 lists them all in Allow
    (RFC 9110 section 15.5.6)."""
    by_path: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        by_path.setdefault(e.path, []).append(e)
    return [Route(path, group[0].handler if len(group) == 1 else _by_method(group),
                  methods=[e.method for e in group])
            for path, group in by_path.items()]


def _by_method(group: Sequence[Endpoint]) -> Handler:
    handlers = {e.method: e.handler for e in group}
    if "GET" in handlers:
        handlers.setdefault("HEAD", handlers["GET"])  # Starlette lets HEAD in with GET

    async def by_method(request: Request) -> Response:
        handler = handlers[request.method]
        request.scope["endpoint"] = handler  # the latency metric and log line name it
        return await handler(request)

    # What a request the router refuses before any handler (a 405) is named
    # by: the path, as the route of both methods was named before issue 9.
    by_method.__name__ = group[0].path.strip("/").replace("/", "_") or "root"
    return by_method


def fast_http(endpoints: Sequence[Endpoint] = ENDPOINTS) -> Mapping[tuple[str, str], ASGIApp]:
    """The endpoints that answer without Starlette's router, for RequestContext."""
    return {(e.method, e.path): e.asgi for e in endpoints if e.asgi is not None}

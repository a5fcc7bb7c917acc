"""`GET /account`: the caller's account against its plan (contract section
10), as `services.accounts.standing` reads it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from broker.http.auth import authenticate
from broker.http.messages import read_share
from broker.http.responses import ok
from broker.services import accounts as account_service
from protocol.api import AccountInfo, DevicesUsed, PlanInfo, UsageInfo

if TYPE_CHECKING:
    from broker.runtime import Broker


async def get_account(request: Request) -> Response:
    """Any key that reads messages may read what they count against; the
    plan's numbers are no secret of the account's own."""
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "messages:read")
    async with read_share(broker, key.account_id):
        account, month, usage = await account_service.standing(broker.pool, key.account_id)
    return ok(AccountInfo(
        id=str(account.id), email=account.email,
        plan=PlanInfo(name=account.plan, monthlyMessages=account.monthly_messages,
                      maxDevices=account.max_devices),
        usage=UsageInfo(month=month.strftime("%Y-%m"), messages=usage.messages,
                        limit=account.monthly_messages),
        devices=DevicesUsed(active=usage.active_devices, limit=account.max_devices)))

"""Two accounts in two browser contexts: the second sees none of the
first's keys, phones, messages, received SMS or webhooks, and the first's
own pages (a message, a phone, a webhook) are a 404 for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import (
    LOOP,
    User,
    create_key,
    new_context,
    register_phone,
    sign_up,
)
from tests.e2e.conftest import Server, send_sms

pytestmark = LOOP


@pytest_asyncio.fixture(loop_scope="package")
async def other(browser: Browser, server: Server) -> AsyncIterator[BrowserContext]:
    ctx = await new_context(browser, server)
    try:
        yield ctx
    finally:
        await ctx.close()


async def test_a_second_account_sees_none_of_the_first(
        page: Page, user: User, other: BrowserContext, server: Server) -> None:
    # The first account: a key, a phone, a message, a webhook.
    key = await create_key(page, "first's key")
    await register_phone(page, "First's phone")
    device_url = await page.get_by_role("link", name="Go to First's phone").get_attribute("href")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        r = await send_sms(http, key, recipient="+16502539999", ttl=600)
        assert r.status_code == 201, r.text
        message_url = f"/dashboard/messages/{r.json()['data']['id']}"
    await page.goto("/dashboard/webhooks")
    await page.get_by_label("URL").fill("http://127.0.0.1:9/first")
    await page.get_by_label("All events").check()
    await page.get_by_role("button", name="Add webhook").click()
    webhook_url = await page.get_by_role("link", name="http://127.0.0.1:9/first").first \
        .get_attribute("href")
    for path in (message_url, device_url, webhook_url):
        assert path and (await page.goto(path)).status == 200  # type: ignore[union-attr]

    # The second account, in another browser context.
    second = await other.new_page()
    await sign_up(second)
    await second.goto("/dashboard/keys")
    await expect(second.locator("#no-keys")).to_be_visible()
    await second.goto("/dashboard/devices")
    await expect(second.locator("#device-none")).to_be_visible()
    await second.goto("/dashboard/messages")
    await expect(second.locator("#messages-empty")).to_be_visible()
    await second.goto("/dashboard/inbox")
    await expect(second.locator("#inbox-empty")).to_be_visible()
    await second.goto("/dashboard/webhooks")
    await expect(second.locator("#no-webhooks")).to_be_visible()
    await second.goto("/dashboard")
    await expect(second.locator("#usage-messages")).to_have_text("0")
    await expect(second.locator("#phones-registered")).to_have_text("0")
    for path in ("/dashboard/keys", "/dashboard/devices", "/dashboard/messages", "/dashboard"):
        await second.goto(path)
        for secret in (user.email, "First's phone", "+16502539999", "first's key"):
            await expect(second.locator("main")).not_to_contain_text(secret)

    for path in (message_url, device_url, webhook_url):
        answer = await second.goto(path)  # type: ignore[arg-type]
        assert answer is not None and answer.status == 404, (path, answer and answer.status)
        await expect(second.locator("main")).not_to_contain_text("+16502539999")
    # Nor can it act on them: a cancel of the first's message is a 404 too.
    csrf = await second.locator("input[name=csrf]").first.input_value()
    r = await second.request.post(f"{message_url}/cancel", form={"csrf": csrf}, max_redirects=0)
    assert r.status == 404
    await page.goto(message_url)
    await expect(page.locator("#message-status")).to_have_text("queued")

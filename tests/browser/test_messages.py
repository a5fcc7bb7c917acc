"""Messages in chromium, with a real `smsdora device-sim` phone that acks
and reports: a test SMS sent from the page reaches `delivered` on its detail
page without a reload; the list, opened before, shows it and a send from
outside the browser (the API, httpx) arrive and reach `delivered` live; an
SMS the phone receives turns up in the inbox live; the overview counts
them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import (
    LOOP,
    PHONE,
    Sim,
    User,
    connect_phone,
    create_key,
    new_context,
    shot,
)
from tests.e2e.conftest import Server, send_sms

pytestmark = LOOP
STATUSES = ["queued", "dispatching", "sending", "sent", "delivered"]


async def live(context: BrowserContext, path: str) -> Page:
    """`path` in a tab of its own, its live stream open."""
    tab = await context.new_page()
    await tab.goto(path)
    await expect(tab.locator("html")).to_have_attribute("data-live-state", "open")
    return tab


async def test_sends_reach_delivered_live_and_the_inbox_fills_live(
        browser: Browser, context: BrowserContext, page: Page, user: User, server: Server,
        device_sim: Callable[..., Awaitable[Sim]]) -> None:
    key = await create_key(page, "website", "messages:send")
    # The phone takes a second to send each SMS: the pages are seen before
    # `delivered`, and follow it there live.
    sim = await connect_phone(context, server, device_sim, "Pixel 8", delay_ms=1000)
    listing = await live(context, "/dashboard/messages")
    await expect(listing.locator("#messages-empty")).to_be_visible()

    # A test SMS from the page: to its detail, which follows it to delivered.
    await page.goto("/dashboard/messages")
    await page.locator("#send-recipient").fill("+16502530000")
    await page.locator("#send-message").fill("Hello from the dashboard")
    async with page.expect_response(re.compile(r"/dashboard/messages/[0-9a-f-]{36}$")) as shown:
        await page.get_by_role("button", name="Send test SMS").click()
    rendered = re.search(r'id="message-status" data-status="(\w+)"', await (await shown.value).text())
    assert rendered and rendered.group(1) != "delivered", rendered  # not yet, as rendered
    message_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#message-status")).to_have_text("delivered")
    timeline = page.locator("#message-timeline li")
    await expect(timeline).to_have_count(len(STATUSES))
    assert [await li.get_attribute("data-status") for li in await timeline.all()] == STATUSES
    await expect(page.locator("#message-device")).to_have_text("Pixel 8")
    await expect(page.locator("#cancel-message")).to_have_count(0)  # too late to cancel
    await shot(page, "message")

    # The list, open all along, got the row and its status without a reload.
    row = listing.locator(f"#message-{message_id}")
    await expect(row.locator(".status")).to_have_text("delivered")
    await expect(row).to_contain_text("+16502530000")

    # A send from outside the browser, as an application's: a new row, live.
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        r = await send_sms(http, key, recipient="+16502530001", message="Your code is 4829")
        assert r.status_code == 201, r.text
        api_id = r.json()["data"]["id"]
    api_row = listing.locator(f"#message-{api_id}")
    await expect(api_row.locator(".status")).to_have_text("delivered")
    await expect(listing.locator("#messages-body tr").first).to_have_id(f"message-{api_id}")
    await expect(listing.locator("#messages-body tr")).to_have_count(2)
    await listing.reload()  # the live rows are what a reload shows
    await expect(listing.locator("#messages-body tr")).to_have_count(2)
    await expect(listing.locator(f"#message-{message_id} .status")).to_have_text("delivered")
    await shot(listing, "messages")

    # Filters: by status and by recipient.
    await listing.get_by_label("Status").select_option("failed")
    await listing.get_by_role("button", name="Filter messages").click()
    await expect(listing.locator("#messages-empty")).to_be_visible()
    await listing.goto("/dashboard/messages?recipient=%2B16502530001")
    await expect(listing.locator("#messages-body tr")).to_have_count(1)
    await expect(listing.locator(f"#message-{api_id}")).to_be_visible()

    # The phone's screen: the same list, its optional columns folded away.
    small = await new_context(browser, server, PHONE)
    try:
        await small.add_cookies(await context.cookies())
        phone = await small.new_page()
        await phone.goto("/dashboard/messages")
        await expect(phone.locator(f"#message-{api_id} .status")).to_have_text("delivered")
        await expect(phone.locator("#messages-body td.opt").first).to_be_hidden()
        await shot(phone, "messages-phone")
    finally:
        await small.close()

    # An SMS the phone receives: in the inbox, live.
    inbox = await live(context, "/dashboard/inbox")
    await expect(inbox.locator("#inbox-empty")).to_be_visible()
    await sim.say("sms +15555550123 Running late, see you at 6")
    sms = inbox.locator("#inbox-body tr", has_text="Running late, see you at 6")
    await expect(sms).to_contain_text("+15555550123")
    await expect(sms).to_contain_text("Pixel 8")
    await shot(inbox, "inbox")

    # The overview counts it all.
    await page.goto("/dashboard")
    await expect(page.locator("#usage-messages")).to_have_text("2")
    await expect(page.locator("#phones-online")).to_have_text("1")
    await expect(page.locator("#recent-body tr")).to_have_count(2)
    await shot(page, "overview")


async def test_a_message_waiting_for_a_phone_can_be_cancelled(
        page: Page, user: User, server: Server) -> None:
    key = await create_key(page, "batch")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        r = await send_sms(http, key, ttl=600)  # no phone: it waits, queued
        assert r.status_code == 201, r.text
        message_id = r.json()["data"]["id"]
    await page.goto(f"/dashboard/messages/{message_id}")
    await expect(page.locator("#message-status")).to_have_text("queued")
    await page.get_by_role("button", name="Cancel message").click()
    await expect(page.locator("#message-status")).to_have_text("failed")
    await expect(page.locator("#message-error")).to_have_text("cancelled")

"""API keys in chromium: a key created in the page, shown once, sends an
SMS from outside the browser (httpx, as an application would); revoked in
the page, the next send with it is refused."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.browser.conftest import LOOP, User, create_key, shot
from tests.e2e.conftest import Server, send_sms

pytestmark = LOOP


async def test_a_key_made_in_the_page_sends_until_it_is_revoked(
        page: Page, user: User, server: Server) -> None:
    key = await create_key(page, "website", "messages:send", "messages:read")
    await expect(page.get_by_role("button", name="Copy")).to_be_visible()  # live.js unhid it
    row = page.locator("#keys tr", has_text="website")
    await expect(row.locator(".status")).to_have_text("active")
    await expect(row).to_contain_text("messages:read")
    await shot(page, "keys")

    # Shown once: the next look at the page has its prefix only (a reload
    # would post the form again: the page is the POST's answer).
    await page.goto("/dashboard/keys")
    await expect(page.locator("#new-key-secret")).to_have_count(0)
    assert key not in await page.content()
    prefix = key.split("_")[1]
    await expect(row).to_contain_text(f"smsgw_{prefix}_…")

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        r = await send_sms(http, key, ttl=600)  # no phone yet: it waits for one
        assert r.status_code == 201, r.text

        await page.get_by_role("button", name="Revoke key website").click()
        await expect(row.locator(".status")).to_have_text("revoked")
        await expect(row.get_by_role("button", name="Revoke key website")).to_have_count(0)
        r = await send_sms(http, key, ttl=600)
        assert r.status_code == 401, r.text


async def test_a_rotated_key_is_shown_once_and_the_old_one_stops(
        page: Page, user: User, server: Server) -> None:
    old = await create_key(page, "cron")
    await page.get_by_role("button", name="Rotate key cron").click()
    await expect(page.locator("#new-key")).to_contain_text("Key rotated: cron")
    new = (await page.locator("#new-key-secret").text_content() or "").strip()
    assert new.startswith("smsgw_") and new != old
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await send_sms(http, old, ttl=600)).status_code == 401
        assert (await send_sms(http, new, ttl=600)).status_code == 201

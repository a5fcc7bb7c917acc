"""Webhooks in chromium: an endpoint added in the page, its signing secret
shown once; a test event sent from its page reaches a real receiver that
verifies it with that secret (the standardwebhooks library) and shows in the
deliveries log; disable and enable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from playwright.async_api import Page, expect

from tests.browser.conftest import LOOP, User, shot
from tests.e2e.webhook_receiver import Receiver, running

pytestmark = LOOP


@pytest_asyncio.fixture(loop_scope="package")
async def receiver() -> AsyncIterator[Receiver]:
    async with running() as r:
        yield r


async def test_a_webhook_added_in_the_page_gets_a_signed_test_event(
        page: Page, user: User, receiver: Receiver) -> None:
    await page.goto("/dashboard/webhooks")
    await expect(page.locator("#no-webhooks")).to_be_visible()
    await page.get_by_label("URL").fill(receiver.url)
    await page.get_by_label("All events").check()
    await page.get_by_label("Description").fill("Order updates")
    await page.get_by_role("button", name="Add webhook").click()
    await expect(page.locator("#new-webhook")).to_contain_text(f"Webhook added: {receiver.url}")
    secret = (await page.locator("#new-webhook-secret").text_content() or "").strip()
    assert secret.startswith("whsec_"), secret
    row = page.locator("#webhooks tr", has_text=receiver.url)
    await expect(row.locator(".status")).to_have_text("enabled")
    await expect(row).to_contain_text("All events")
    await shot(page, "webhooks")

    await page.goto("/dashboard/webhooks")  # shown once
    await expect(page.locator("#new-webhook-secret")).to_have_count(0)
    assert secret not in await page.content()

    await page.get_by_role("link", name=receiver.url).click()
    await expect(page.locator("#webhook-url")).to_have_text(receiver.url)
    await expect(page.locator("#no-deliveries")).to_be_visible()
    receiver.secrets.append(secret)
    await page.get_by_role("button", name="Send a test event").click()
    await receiver.wait(lambda: len(receiver.delivered) == 1, what="the test event")
    [got] = receiver.delivered.values()
    assert got.verified, "the test event is not signed with the secret the page showed"
    delivery = page.locator("#deliveries tr", has_text=got.webhook_id)
    await expect(delivery.locator(".status")).to_have_text("204")
    await expect(delivery).to_contain_text(str(got.body["type"]))
    await shot(page, "webhook")

    await page.get_by_role("button", name="Disable webhook").click()
    await expect(page.locator("#webhook-state .status")).to_have_text("disabled")
    await page.get_by_role("button", name="Enable webhook").click()
    await expect(page.locator("#webhook-state .status")).to_have_text("enabled")

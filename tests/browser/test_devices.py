"""Adding a phone in chromium: a pairing code (and its QR code) for the SMS
Gateway app and a token for a WebSocket phone, each used by the real
`smsdora device-sim`; the devices page, opened before, shows each phone
online without a reload (the live stream)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from playwright.async_api import BrowserContext, Page, expect

from tests.browser.conftest import LOOP, Sim, User, register_phone, shot
from tests.e2e.conftest import Server

pytestmark = LOOP


async def live_devices(context: BrowserContext) -> Page:
    """The devices page in a tab of its own, its live stream open."""
    tab = await context.new_page()
    await tab.goto("/dashboard/devices")
    await expect(tab.locator("html")).to_have_attribute("data-live-state", "open")
    return tab


async def test_a_phone_paired_by_the_code_shown_turns_up_online_live(
        context: BrowserContext, page: Page, user: User,
        device_sim: Callable[..., Awaitable[Sim]]) -> None:
    devices = await live_devices(context)
    await expect(devices.locator("#device-none")).to_be_visible()

    await page.goto("/dashboard/devices")
    await page.get_by_role("link", name="Add a phone").click()
    await page.get_by_role("button", name="Make a pairing code").click()
    code = (await page.locator("#pairing-code").text_content() or "").strip()
    url = (await page.locator("#server-url").text_content() or "").strip()
    assert len(code) == 6 and url.endswith("/api/mobile/v1"), (code, url)
    qr = page.get_by_role("img", name=f"QR code of the server URL {url}")
    await expect(qr).to_be_visible()
    assert (await qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    await shot(page, "devices-add")

    await device_sim("--app", "smsgate", "--url", url, "--name", "Pixel 8",
                     env={"SMSDORA_REGISTER_CODE": code})
    row = devices.locator("#devices-body tr[id^='device-']:not(#device-none)")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("Pixel 8")
    await expect(row).to_have_attribute("data-online", "true")
    await expect(row.locator(".status.online")).to_have_text("online")
    await expect(row).to_contain_text("SMS Gateway app")
    await expect(devices.locator("#device-none")).to_be_hidden()
    await shot(devices, "devices")


async def test_a_websocket_phone_registered_offline_turns_online_live(
        context: BrowserContext, page: Page, user: User,
        device_sim: Callable[..., Awaitable[Sim]], server: Server) -> None:
    token = await register_phone(page, "Desk phone")
    await expect(page.locator("#device-sim-command")).to_contain_text(f"--url {server.url}")

    devices = await live_devices(context)
    row = devices.locator("#devices-body tr[id^='device-']:not(#device-none)")
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-online", "false")
    await expect(row.locator(".status.offline")).to_have_text("offline")

    sim = await device_sim("--url", server.url, env={"SMSDORA_DEVICE_TOKEN": token})
    await expect(row).to_have_attribute("data-online", "true")
    await expect(row.locator(".status.online")).to_have_text("online")
    await expect(row).to_contain_text("WebSocket")

    sim.proc.terminate()  # and offline again when it goes away
    await sim.proc.wait()
    await expect(row).to_have_attribute("data-online", "false")

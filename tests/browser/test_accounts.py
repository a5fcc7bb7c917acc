"""Signing up, logging out and in, no page without a session, and a form
without its CSRF token, in chromium (issue 13's proof)."""

from __future__ import annotations

import re

from playwright.async_api import BrowserContext, Page, expect

from tests.browser.conftest import LOOP, User, shot, sign_up
from tests.e2e.conftest import Server

pytestmark = LOOP

# Every page of CONTRACT section 11, and a message's detail (any id: the
# redirect comes before the lookup).
PAGES = ("/dashboard", "/dashboard/devices", "/dashboard/keys", "/dashboard/messages",
         "/dashboard/messages/00000000-0000-4000-8000-000000000000", "/dashboard/inbox",
         "/dashboard/webhooks", "/dashboard/password")


async def test_sign_up_log_out_log_in(page: Page) -> None:
    user = await sign_up(page)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.locator("header .who")).to_contain_text(user.email)
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await shot(page, "login")

    await page.goto("/dashboard/password")  # back to where one was going, after the login
    await expect(page).to_have_url(re.compile(r"/login\?next=/dashboard/password$"))
    await page.get_by_label("Email").fill(user.email)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_have_text("Invalid email or password")
    await page.get_by_label("Password").fill(user.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/dashboard/password$"))
    await expect(page.locator("header .who")).to_contain_text(user.email)


async def test_every_page_without_a_session_goes_to_login(context: BrowserContext,
                                                          page: Page) -> None:
    for path in PAGES:
        await page.goto(path)
        await expect(page).to_have_url(re.compile(r"/login\?next="))
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        assert all(c["name"] != "smsdora_session" for c in await context.cookies())


async def test_a_form_without_its_csrf_token_is_refused(page: Page, user: User,
                                                        server: Server) -> None:
    # The page's own form, its hidden token taken out before it is sent.
    await page.goto("/dashboard/password")
    await page.get_by_label("Current password").fill(user.password)
    await page.get_by_label("New password").fill("another fine passphrase")
    await page.locator("main form input[name=csrf]").evaluate("e => e.remove()")
    await page.locator("main form").get_by_role("button").click()
    await expect(page.locator("main")).to_contain_text("did not come from this site")
    # And one posted from outside the page, with the session's cookie only.
    r = await page.request.post("/logout", form={"csrf": "forged"}, max_redirects=0)
    assert r.status == 403
    await page.goto("/dashboard")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()  # still in
    # The password did not change: it still logs in.
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_label("Email").fill(user.email)
    await page.get_by_label("Password").fill(user.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))

"""The dashboard (CONTRACT section 11): server-rendered pages of the broker
itself, sessions in PostgreSQL, a CSRF token on every form, live updates by
SSE; every action through `services/`, as the API and the CLI."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from broker.dashboard import accounts, devices, inbox, keys, messages, overview, webhooks
from broker.dashboard.live import live
from broker.dashboard.web import HERE


def routes() -> list[BaseRoute]:
    return [
        Route("/login", accounts.login_page, methods=["GET", "POST"]),
        Route("/signup", accounts.signup_page, methods=["GET", "POST"]),
        Route("/logout", accounts.logout, methods=["POST"]),
        Route("/dashboard/password", accounts.password_page, methods=["GET", "POST"]),
        Route("/dashboard/live", live, methods=["GET"]),
        *overview.ROUTES, *devices.ROUTES, *keys.ROUTES, *messages.ROUTES, *inbox.ROUTES,
        *webhooks.ROUTES,
        Mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

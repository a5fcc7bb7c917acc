"""The dashboard's overview (CONTRACT section 11): this month's usage
against the plan, phones online, recent messages, failing webhooks."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.dashboard.web import Session, page, redirect, render


@page
async def overview_page(request: Request, user: Session) -> Response:
    return render(request, "overview.html", user=user)


async def root(request: Request) -> Response:
    return redirect("/dashboard")


ROUTES: list[BaseRoute] = [
    Route("/dashboard", overview_page, methods=["GET"]),
    Route("/", root, methods=["GET"]),
]

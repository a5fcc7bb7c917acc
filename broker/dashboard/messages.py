"""The dashboard's messages page(s) (CONTRACT section 11)."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []

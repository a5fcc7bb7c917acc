"""Signing up, logging in and out, changing the password (CONTRACT
section 11). Passwords are argon2id, verified off the event loop, and
throttled per address and per email by the same `login` the SMS Gateway
app's sign-in uses (broker/http/auth.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from broker.dashboard.web import (
    CSRF_COOKIE,
    LoginRequired,
    Session,
    broker_of,
    check_csrf,
    end_session,
    form,
    local,
    page,
    pre_session_csrf,
    redirect,
    render,
    session,
    start_session,
)
from broker.errors import BrokerError
from broker.http import auth
from broker.services import accounts as account_service
from broker.store import sessions


async def _signed_in(request: Request) -> bool:
    try:
        await session(request)
    except LoginRequired:
        return False
    return True


def _form_page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    token = pre_session_csrf(request)
    return render(request, template, status, csrf=token, csrf_cookie=token, **context)


async def login_page(request: Request) -> Response:
    if request.method == "GET":
        if await _signed_in(request):
            return redirect(local(request.query_params.get("next")))
        return _form_page(request, "login.html", next=local(request.query_params.get("next")),
                          email="", message=None,
                          signup=broker_of(request).settings.signup_open)
    fields = await form(request)
    next_path = local(fields.get("next"))
    try:
        check_csrf(fields, request.cookies.get(CSRF_COOKIE))
        account = await auth.login(broker_of(request), auth.address_of(request),
                                   fields.get("email", ""), fields.get("password", ""))
    except BrokerError as err:
        return _form_page(request, "login.html", err.status, next=next_path,
                          email=fields.get("email", ""), message=err.message,
                          signup=broker_of(request).settings.signup_open)
    response = redirect(next_path)
    await start_session(request, response, account.id)
    return response


async def signup_page(request: Request) -> Response:
    broker = broker_of(request)
    if not broker.settings.signup_open:
        return render(request, "error.html", 404,
                      message="Sign-up is closed on this broker: ask its operator for an account.")
    if request.method == "GET":
        return _form_page(request, "signup.html", email="", message=None)
    fields = await form(request)
    try:
        check_csrf(fields, request.cookies.get(CSRF_COOKIE))
        account = await account_service.sign_up(broker.pool, fields.get("email", ""),
                                                fields.get("password", ""))
    except BrokerError as err:
        return _form_page(request, "signup.html", err.status, email=fields.get("email", ""),
                          message=err.message)
    response = redirect("/dashboard")
    await start_session(request, response, account.id)
    return response


@page
async def logout(request: Request, user: Session) -> Response:
    await sessions.delete_session(broker_of(request).pool, user.token)
    response = redirect("/login")
    end_session(response)
    return response


@page
async def password_page(request: Request, user: Session) -> Response:
    if request.method == "GET":
        return render(request, "password.html", user=user, message=None, done=False)
    fields = request.state.form
    broker = broker_of(request)
    try:
        await auth.login(broker, auth.address_of(request), user.email, fields.get("current", ""))
        await account_service.set_password(broker.pool, user.account_id, fields.get("new", ""))
    except BrokerError as err:
        return render(request, "password.html", err.status, user=user, message=err.message,
                      done=False)
    # Every other session of the account ends: a password change is often
    # because someone else knew the old one.
    await sessions.delete_sessions_of(broker.pool, user.account_id, keep=user.token)
    return render(request, "password.html", user=user, message=None, done=True)

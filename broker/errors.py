"""Named errors. What a caller or a phone did wrong is a BrokerError that the
edge turns into the contract's HTTP error shape; our own bugs are not caught
here and end as a logged 500 in the same shape."""

from __future__ import annotations


class BrokerError(Exception):
    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(BrokerError):
    status = 400


class NoEligibleDevice(BadRequest):
    def __init__(self) -> None:
        super().__init__("No eligible device available")


class Unauthorized(BrokerError):
    status = 401


class KeyChanged(Unauthorized):
    """The API key changed (revoked, rotated, expired) after the cached check:
    the edge checks it again against PostgreSQL for the precise answer."""

    def __init__(self) -> None:
        super().__init__("Invalid API key")


class Forbidden(BrokerError):
    status = 403


class RateLimited(Forbidden):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Rate limit exceeded", headers={"Retry-After": str(retry_after_s)})


class NotFound(BrokerError):
    status = 404


class MethodNotAllowed(BrokerError):
    status = 405


class Conflict(BrokerError):
    status = 409


class PayloadTooLarge(BrokerError):
    status = 413


class Unavailable(BrokerError):
    status = 503

"""The SMS Gateway for Android app's JSON, as it encodes and decodes it
(shared/SMSGATE.md section 4). Not our envelope: the app's own shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

_NO_NUL = "^[^\x00]*$"  # PostgreSQL text cannot hold a NUL
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)]
PushToken = Annotated[str, msgspec.Meta(max_length=256, pattern=_NO_NUL)]


class SimCard(msgspec.Struct, frozen=True, omit_defaults=True):
    """One SIM as the app reports it (already redacted by the app)."""

    slotIndex: int | None = None
    simNumber: int | None = None
    phoneNumber: Annotated[str, msgspec.Meta(max_length=64, pattern=_NO_NUL)] | None = None
    carrierName: Annotated[str, msgspec.Meta(max_length=128, pattern=_NO_NUL)] | None = None
    iccid: Annotated[str, msgspec.Meta(max_length=64, pattern=_NO_NUL)] | None = None


SimCards = Annotated[list[SimCard], msgspec.Meta(max_length=16)]


class RegisterRequest(msgspec.Struct, frozen=True):
    """`POST /device` (SMSGATE.md 4.1)."""

    name: Name
    pushToken: PushToken | None = None
    simCards: SimCards | None = None


class Registered(msgspec.Struct, frozen=True):
    """Its answer, stored verbatim by the app. No `password`: the phone
    joins an existing account, whose email is the `login`."""

    id: str
    token: str
    login: str


class DeviceUpdate(msgspec.Struct, frozen=True):
    """`PATCH /device` (SMSGATE.md 4.2), sent at every start of the app."""

    id: Annotated[str, msgspec.Meta(max_length=64)]
    pushToken: PushToken | None = None
    simCards: SimCards | None = None


class ExternalIp(msgspec.Struct, frozen=True):
    """`GET /device`: the app reads only `externalIp`."""

    externalIp: str


class UserCode(msgspec.Struct, frozen=True):
    """`GET /user/code` (SMSGATE.md 4.4)."""

    code: str
    validUntil: str


class PasswordChange(msgspec.Struct, frozen=True):
    """`PATCH /user/password` (SMSGATE.md 4.5)."""

    currentPassword: Annotated[str, msgspec.Meta(max_length=1024)]
    newPassword: Annotated[str, msgspec.Meta(max_length=1024)]


class TextMessage(msgspec.Struct, frozen=True):
    text: str


class MobileMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One item of `GET /message` (SMSGATE.md 4.6): text in both fields the
    app reads, one phone number, dates with 3 fractional digits."""

    id: str  # a UUID: 36 characters, the app's limit
    message: str
    textMessage: TextMessage
    phoneNumbers: list[str]
    withDeliveryReport: bool
    state: str  # "Pending", or "Cancelling" for a job the broker asked back
    createdAt: str
    validUntil: str | None = None  # from the send's ttl: the app enforces it


# What the phone says of a job (SMSGATE.md 4.7); it never sends `Cancelling`.
State = Literal["Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelled"]


class RecipientState(msgspec.Struct, frozen=True):
    phoneNumber: str = ""
    state: str = ""
    error: str | None = None


class MessageState(msgspec.Struct, frozen=True):
    """One item of `PATCH /message`: a full snapshot of the job on the phone.
    `states` (when each state was reached) is read leniently: ignored."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    state: State
    recipients: Annotated[list[RecipientState], msgspec.Meta(max_length=16)] = []
    states: dict[str, Any] = {}

    def error(self) -> str:
        """The phone's reason for a failure, from the recipient that has one."""
        for r in self.recipients:
            if r.error:
                return r.error[:500]
        return "failed"


def sim_cards_json(cards: list[SimCard] | None) -> list[Any] | None:
    return None if cards is None else [msgspec.to_builtins(c) for c in cards]


register_decoder = msgspec.json.Decoder(RegisterRequest)
update_decoder = msgspec.json.Decoder(DeviceUpdate)
password_decoder = msgspec.json.Decoder(PasswordChange)
patch_decoder = msgspec.json.Decoder(
    Annotated[list[MessageState], msgspec.Meta(min_length=1, max_length=100)])

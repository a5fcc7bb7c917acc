"""broker/keys.py: pure code, no I/O, no event loop.

Contract section 3: keys are `smsgw_<8 hex>_<secret>` (device tokens
`smsdev_...`), the secret at least 32 random characters, stored only as
HMAC-SHA256 with a server secret; scopes, with `keys:write` implying the
others; a per-minute limit over a rolling 60-second window.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from broker import keys
from protocol.api import SCOPES

SECRET = b"server-secret-for-tests"
GOOD = "smsgw_0123abcd_" + "A" * 32


# --- make_secret ------------------------------------------------------------


@pytest.mark.parametrize("kind", [keys.KEY_KIND, keys.TOKEN_KIND])
def test_make_secret_format(kind: str) -> None:
    full, prefix = keys.make_secret(kind)
    m = re.fullmatch(rf"{kind}_([0-9a-f]{{8}})_([A-Za-z0-9_-]+)", full)
    assert m is not None, full
    assert m.group(1) == prefix
    assert len(m.group(2)) >= 32
    # What it makes, it parses back.
    assert keys.parse_prefix(kind, full) == prefix


def test_kinds_are_the_contract_words() -> None:
    assert keys.KEY_KIND == "smsgw"
    assert keys.TOKEN_KIND == "smsdev"


def test_make_secret_is_unique() -> None:
    made = [keys.make_secret(keys.KEY_KIND) for _ in range(500)]
    assert len({full for full, _ in made}) == 500
    secrets_only = {full.split("_", 2)[2] for full, _ in made}
    assert len(secrets_only) == 500


# --- parse_prefix -----------------------------------------------------------


def test_parse_prefix_accepts_well_formed() -> None:
    assert keys.parse_prefix("smsgw", GOOD) == "0123abcd"
    # The secret part may itself contain underscores (token_urlsafe alphabet).
    assert keys.parse_prefix("smsgw", "smsgw_deadbeef_" + "a_b-" * 8) == "deadbeef"
    assert keys.parse_prefix("smsdev", "smsdev_00000000_" + "x" * 40) == "00000000"


@pytest.mark.parametrize("bad", [
    "smsdev_0123abcd_" + "A" * 32,       # wrong kind
    "smsgwx_0123abcd_" + "A" * 32,       # kind is not a prefix match
    "smsgw_0123abcd_" + "A" * 31,        # secret one short of 32
    "smsgw_0123ABCD_" + "A" * 32,        # uppercase hex
    "smsgw_0123abcg_" + "A" * 32,        # non-hex
    "smsgw_0123abc_" + "A" * 33,         # 7 hex
    "smsgw_0123abcde_" + "A" * 32,       # 9 hex
    "smsgw_0123abcd",                    # no secret part
    "smsgw_0123abcd_",                   # empty secret
    "smsgw",                             # kind only
    "",                                  # nothing
    "0123abcd_" + "A" * 40,              # no kind
    "Bearer smsgw_0123abcd_" + "A" * 32,  # a whole header value
])
def test_parse_prefix_rejects(bad: str) -> None:
    assert keys.parse_prefix("smsgw", bad) is None


# --- digest / matches -------------------------------------------------------


def test_digest_is_hmac_sha256_keyed_by_server_secret() -> None:
    got = keys.digest(SECRET, GOOD)
    assert got == hmac.new(SECRET, GOOD.encode(), hashlib.sha256).digest()
    assert len(got) == 32
    # Not a bare SHA-256: the server secret matters.
    assert got != hashlib.sha256(GOOD.encode()).digest()
    assert keys.digest(b"another-server-secret", GOOD) != got
    # Deterministic, and different keys hash differently.
    assert keys.digest(SECRET, GOOD) == got
    assert keys.digest(SECRET, GOOD[:-1] + "B") != got


def test_matches() -> None:
    stored = keys.digest(SECRET, GOOD)
    assert keys.matches(SECRET, GOOD, stored) is True
    assert keys.matches(SECRET, GOOD[:-1] + "B", stored) is False
    assert keys.matches(b"another-server-secret", GOOD, stored) is False
    assert keys.matches(SECRET, GOOD, b"") is False


def test_stored_hash_never_holds_the_key() -> None:
    full, _ = keys.make_secret(keys.KEY_KIND)
    stored = keys.digest(SECRET, full)
    secret_part = full.split("_", 2)[2]
    assert stored != full.encode()
    assert full.encode() not in stored
    assert secret_part.encode() not in stored
    assert secret_part not in stored.hex()
    assert full.encode() not in stored.hex().encode()


# --- scopes -----------------------------------------------------------------


def test_has_scope() -> None:
    assert keys.has_scope(["messages:send"], "messages:send")
    assert not keys.has_scope(["messages:send"], "messages:read")
    assert not keys.has_scope([], "messages:send")
    assert keys.has_scope(("devices:read",), "devices:read")
    assert not keys.has_scope(("devices:read",), "devices:write")


@pytest.mark.parametrize("needed", SCOPES)
def test_keys_write_implies_every_scope(needed: str) -> None:
    assert keys.has_scope(["keys:write"], needed)


def test_other_scopes_do_not_imply_keys_write() -> None:
    others = [s for s in SCOPES if s != "keys:write"]
    assert not keys.has_scope(others, "keys:write")


def test_check_scopes() -> None:
    assert keys.check_scopes(["messages:send"]) == ["messages:send"]
    assert keys.check_scopes(["messages:read", "messages:send", "messages:read"]) == [
        "messages:read", "messages:send"]
    assert keys.check_scopes(list(SCOPES)) == sorted(SCOPES)
    with pytest.raises(ValueError, match="messages:delete"):
        keys.check_scopes(["messages:send", "messages:delete"])
    with pytest.raises(ValueError, match="admin"):
        keys.check_scopes(["admin"])
    with pytest.raises(ValueError):
        keys.check_scopes(["Messages:Send"])


# --- bearer -----------------------------------------------------------------


def test_bearer_x_api_key_only_for_the_api() -> None:
    assert keys.bearer({"x-api-key": GOOD}, api=True) == GOOD
    assert keys.bearer({"x-api-key": "  " + GOOD + " "}, api=True) == GOOD
    assert keys.bearer({"x-api-key": GOOD}, api=False) is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
@pytest.mark.parametrize("api", [True, False])
def test_bearer_authorization_header(scheme: str, api: bool) -> None:
    assert keys.bearer({"authorization": f"{scheme} {GOOD}"}, api=api) == GOOD


@pytest.mark.parametrize("value", [
    f"Basic {GOOD}", f"Token {GOOD}", GOOD, "Bearer", "Bearer ", "Bearer    ", "", f"Bearer{GOOD}",
])
def test_bearer_ignores_other_schemes_and_empty(value: str) -> None:
    assert keys.bearer({"authorization": value}, api=True) is None
    assert keys.bearer({"authorization": value}, api=False) is None


def test_bearer_none_without_headers() -> None:
    assert keys.bearer({}, api=True) is None
    assert keys.bearer({"x-api-key": ""}, api=True) is None


def test_bearer_refuses_two_different_credentials() -> None:
    """RFC 6750 section 2: one method per request; two different secrets are
    a 400 (x-api-key used to win silently). The same secret twice is one."""
    from starlette.datastructures import Headers

    other = "smsgw_11111111_" + "b" * 32
    headers = {"x-api-key": GOOD, "authorization": f"Bearer {other}"}
    with pytest.raises(keys.AmbiguousCredentials):
        keys.bearer(headers, api=True)
    assert keys.bearer(headers, api=False) == other  # x-api-key is no device credential
    for raw in ([(b"x-api-key", GOOD.encode()), (b"x-api-key", other.encode())],
                [(b"authorization", f"Bearer {GOOD}".encode()),
                 (b"authorization", f"Bearer {other}".encode())]):
        with pytest.raises(keys.AmbiguousCredentials):
            keys.bearer(Headers(raw=raw), api=True)
    same = Headers(raw=[(b"x-api-key", GOOD.encode()), (b"authorization", f"Bearer {GOOD}".encode()),
                        (b"x-api-key", f" {GOOD}".encode())])
    assert keys.bearer(same, api=True) == GOOD
    # An empty x-api-key is no credential and does not hide a Bearer header;
    # another scheme (a proxy's Basic) is none of ours.
    assert keys.bearer({"x-api-key": "", "authorization": f"Bearer {other}"}, api=True) == other
    assert keys.bearer({"x-api-key": GOOD, "authorization": "Basic dTpw"}, api=True) == GOOD


def test_bearer_reads_starlette_headers_case_insensitively() -> None:
    from starlette.datastructures import Headers

    headers = Headers({"Authorization": f"Bearer {GOOD}"})
    assert keys.bearer(headers, api=False) == GOOD
    headers = Headers({"X-API-Key": GOOD})
    assert keys.bearer(headers, api=True) == GOOD


def test_key_cache_ages_out_and_drops_by_id() -> None:
    cache: keys.KeyCache[str] = keys.KeyCache(ttl_s=60)
    cache.put("abcd0123", "id-1", "row", now=0.0, generation=cache.generation)
    assert cache.get("abcd0123", now=59.0) == "row"
    assert cache.get("abcd0123", now=61.0) is None  # aged out: read the database again
    cache.put("abcd0123", "id-1", "row", now=100.0, generation=cache.generation)
    cache.drop("id-1")
    assert cache.get("abcd0123", now=100.0) is None


def test_key_cache_refuses_a_row_read_before_a_change_was_announced() -> None:
    cache: keys.KeyCache[str] = keys.KeyCache()
    before = cache.generation  # a request starts reading the key from PostgreSQL
    cache.drop("id-1")  # meanwhile the key is revoked and the notice arrives
    cache.put("abcd0123", "id-1", "stale row", now=0.0, generation=before)
    assert cache.get("abcd0123", now=0.0) is None
    cache.clear()
    assert cache.generation == before + 2


def test_unknown_prefixes_are_remembered_for_their_ttl() -> None:
    unknown = keys.UnknownPrefixes(ttl_s=30)
    unknown.add("abcd0123", now=0.0, generation=unknown.generation)
    assert unknown.has("abcd0123", now=30.0)
    assert not unknown.has("abcd0123", now=30.1)  # aged out: asked again
    assert len(unknown) == 0


def test_unknown_prefixes_forget_a_prefix_a_key_took() -> None:
    unknown = keys.UnknownPrefixes()
    unknown.add("abcd0123", now=0.0, generation=unknown.generation)
    unknown.drop("abcd0123")  # smsdora_key_added: a key with that prefix now exists
    assert not unknown.has("abcd0123", now=0.0)
    before = unknown.generation  # a lookup starts and finds nothing ...
    unknown.drop("abcd0123")  # ... while the key is created
    unknown.add("abcd0123", now=0.0, generation=before)
    assert not unknown.has("abcd0123", now=0.0)  # the stale miss is not remembered


def test_unknown_prefixes_are_bounded() -> None:
    unknown = keys.UnknownPrefixes(max_size=2)
    for i, prefix in enumerate(("00000001", "00000002", "00000003")):
        unknown.add(prefix, now=float(i), generation=unknown.generation)
    assert len(unknown) == 2
    assert not unknown.has("00000001", now=3.0)  # the oldest went first
    assert unknown.has("00000003", now=3.0)
    unknown.clear()
    assert len(unknown) == 0

"""PostgreSQL: asyncpg only; every function returns Structs, never records.

One module per table family; this package's namespace is the door the rest
of the broker uses (`store.insert_message(...)`). Every query that touches
account data filters on the caller's account (or on a device id that was
itself resolved from a token of that account).
"""

from broker.store import migrate
from broker.store.accounts import (
    Account,
    DuplicateEmail,
    account_by_email,
    account_by_id,
    create_account,
    messages_this_month,
)
from broker.store.devices import (
    DEVICE_DEACTIVATED,
    DeviceLimitReached,
    DeviceRow,
    deactivate_device,
    devices_by_token_prefix,
    flush_last_seen,
    forget_node,
    insert_device,
    list_devices,
)
from broker.store.jobs import (
    Held,
    Job,
    OpenJobs,
    Stopped,
    Unacked,
    claim_queued,
    fail_due,
    held_jobs,
    lock_for_reports,
    open_jobs,
    queued_count,
    reassign,
    unacked_jobs,
    write_history,
    write_moves,
)
from broker.store.keys import (
    KEY_CHANGED,
    KeyRow,
    insert_key,
    key_by_prefix,
    list_keys,
    revoke_key,
    rotate_key,
)
from broker.store.messages import (
    DEVICE_GONE,
    KEY_GONE,
    WRITTEN,
    HistoryRow,
    Idempotent,
    MessageRow,
    claim_idempotency,
    get_message,
    idempotent_response,
    insert_message,
    list_messages,
    set_idempotent_response,
)
from broker.store.migrate import SchemaTooNew
from broker.store.pool import DATABASE_DOWN, SCHEMA_PATH, Conn, Db, Pool, connect, create_pool, ping

# `store.migrate.migrate(conn)` applies the missing migrations. apply_schema,
# its name when one idempotent schema.sql was applied, stays for the callers
# that still use it (tests/fault, tests/e2e, bench) until they move.
apply_schema = migrate.migrate

__all__ = [
    "DATABASE_DOWN",
    "DEVICE_DEACTIVATED",
    "DEVICE_GONE",
    "KEY_CHANGED",
    "KEY_GONE",
    "SCHEMA_PATH",
    "WRITTEN",
    "Account",
    "Conn",
    "Db",
    "DeviceLimitReached",
    "DeviceRow",
    "DuplicateEmail",
    "Held",
    "HistoryRow",
    "Idempotent",
    "Job",
    "KeyRow",
    "MessageRow",
    "OpenJobs",
    "Pool",
    "SchemaTooNew",
    "Stopped",
    "Unacked",
    "account_by_email",
    "account_by_id",
    "apply_schema",
    "claim_idempotency",
    "claim_queued",
    "connect",
    "create_account",
    "create_pool",
    "deactivate_device",
    "devices_by_token_prefix",
    "fail_due",
    "flush_last_seen",
    "forget_node",
    "get_message",
    "held_jobs",
    "idempotent_response",
    "insert_device",
    "insert_key",
    "insert_message",
    "key_by_prefix",
    "list_devices",
    "list_keys",
    "list_messages",
    "lock_for_reports",
    "messages_this_month",
    "migrate",
    "open_jobs",
    "ping",
    "queued_count",
    "reassign",
    "revoke_key",
    "rotate_key",
    "set_idempotent_response",
    "unacked_jobs",
    "write_history",
    "write_moves",
]

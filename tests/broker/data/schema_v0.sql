-- smsdora schema. Idempotent: `smsdora migrate` applies it on every start.
-- Every table that holds account data carries account_id, and every query
-- the broker makes filters on it.

CREATE TABLE IF NOT EXISTS plans (
    name             text PRIMARY KEY,
    monthly_messages integer NOT NULL,
    max_devices      integer NOT NULL
);
-- A default plan with generous limits so a fresh install works unconfigured.
INSERT INTO plans (name, monthly_messages, max_devices)
VALUES ('default', 1000000, 1000)
ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS accounts (
    id            uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text,                      -- argon2id, human passwords only
    plan          text NOT NULL DEFAULT 'default' REFERENCES plans (name),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
    id           uuid PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL UNIQUE,       -- the public 8 hex of smsgw_<prefix>_<secret>
    secret_hash  bytea NOT NULL,             -- HMAC-SHA256(server secret, full key)
    scopes       text[] NOT NULL,
    rate_limit   integer,                    -- per rolling minute; NULL = unlimited
    expires_at   timestamptz,
    revoked      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys (account_id);

CREATE TABLE IF NOT EXISTS devices (
    id           uuid PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name         text NOT NULL,
    token_prefix text NOT NULL UNIQUE,
    token_hash   bytea NOT NULL,             -- HMAC-SHA256(server secret, full token)
    send_rate    integer NOT NULL DEFAULT 30, -- SMS a minute; 0 = no limit
    active       boolean NOT NULL DEFAULT true,
    last_seen_at timestamptz,
    health       jsonb,
    app_version  text,
    online_node  text,                       -- the broker node holding its socket (batched)
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Columns added after the first release: CREATE TABLE IF NOT EXISTS leaves an
-- existing table as it was, so each later column is also added here.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS online_node text;
CREATE INDEX IF NOT EXISTS devices_account ON devices (account_id);

CREATE TABLE IF NOT EXISTS messages (
    seq        bigserial UNIQUE,             -- keyset pagination order
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id  uuid REFERENCES devices (id), -- the one owner device at a time
    recipient  text NOT NULL,
    body       text NOT NULL,
    status     text NOT NULL CHECK (status IN
                   ('queued', 'dispatching', 'sending', 'sent', 'delivered', 'failed')),
    error      text,
    expires_at timestamptz,                  -- from the request's ttl
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_account_seq ON messages (account_id, seq DESC);
CREATE INDEX IF NOT EXISTS messages_account_status_seq ON messages (account_id, status, seq DESC);
CREATE INDEX IF NOT EXISTS messages_account_created ON messages (account_id, created_at);
-- Non-final jobs by owner: redelivery on connect, queue drains, timers.
CREATE INDEX IF NOT EXISTS messages_open_by_device ON messages (device_id, seq)
    WHERE status IN ('queued', 'dispatching', 'sending', 'sent');
-- The lifecycle's clocks (broker/sweeper.py): ttl expiry, reassignment of
-- jobs never acked, and the 24 h no-report limit.
CREATE INDEX IF NOT EXISTS messages_expiring ON messages (expires_at)
    WHERE status IN ('queued', 'dispatching') AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_unacked ON messages (updated_at) WHERE status = 'dispatching';
CREATE INDEX IF NOT EXISTS messages_unreported ON messages (updated_at) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS messages_queued_by_account ON messages (account_id, seq)
    WHERE status = 'queued';

-- Every transition, committed before its receipt. A status appears at most
-- once per message, so a repeated report cannot add a row.
CREATE TABLE IF NOT EXISTS message_history (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    status     text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    device_id  uuid,
    error      text,
    PRIMARY KEY (message_id, status)
);

-- Idempotency-Key: the first response, replayed for 24 hours.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    message_id   uuid NOT NULL,
    response     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);

-- Brokers cache API keys by prefix; any change to a key (revoke, rotate,
-- delete, or an operator's hand-written UPDATE) tells them to drop it, so a
-- revoked or rotated key stops working at once on every node.
CREATE OR REPLACE FUNCTION smsdora_key_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smsdora_key_changed', OLD.id::text);
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION smsdora_key_changed();

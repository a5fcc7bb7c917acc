-- Webhooks (CONTRACT section 9): the customer's endpoints, and the outbox
-- their events wait in until delivered.
--
-- An event is written to the outbox IN THE SAME TRANSACTION as the change
-- that caused it, so it can be neither lost (the change committed, the
-- event too) nor sent for a change that rolled back. Message events come
-- from a trigger on message_history: every history row of a message, from
-- whatever code path wrote it (send, ack, report, reassign, expiry,
-- cancel, deactivation), fires one event to each enabled endpoint of the
-- account subscribed to it. Device and inbound events call smsdora_emit()
-- from the statement that made the change. The sender (broker/webhooks/)
-- claims due rows with SKIP LOCKED, so any number of nodes share the work.

CREATE TABLE webhooks (
    id              uuid PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url             text NOT NULL,
    events          text[] NOT NULL,  -- event types, or '*'
    description     text NOT NULL DEFAULT '',
    -- The signing secret, `whsec_` + base64 of 24 random bytes. Kept as is,
    -- not hashed: the broker signs with it (an HMAC needs the key itself).
    secret          text NOT NULL,
    -- After a rotation the old secret signs beside the new one until then.
    previous_secret text,
    previous_until  timestamptz,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,             -- why the broker disabled it (410, 5 days)
    -- The first failed attempt since the last 2xx: 5 days of it, with
    -- events owed, disables the endpoint.
    failing_since   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- What every event's fan-out reads: the account's enabled endpoints.
CREATE INDEX webhooks_account_enabled ON webhooks (account_id) WHERE enabled;
CREATE INDEX webhooks_account ON webhooks (account_id, created_at);

-- The outbox: one row per event and endpoint. `id` is the Standard
-- Webhooks `webhook-id`, the same on every attempt; `seq` orders one
-- message's events to one endpoint.
CREATE TABLE webhook_events (
    seq         bigserial PRIMARY KEY,
    id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    webhook_id  uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    account_id  uuid NOT NULL,
    type        text NOT NULL,
    message_id  uuid,          -- the order key; NULL for device, inbound and test events
    data        jsonb NOT NULL,  -- the body's `data`, as it stood in the writing transaction
    occurred_at timestamptz NOT NULL,  -- the body's `timestamp`
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts    integer NOT NULL DEFAULT 0,  -- in this round: where it is in the schedule
    tried       integer NOT NULL DEFAULT 0,  -- in all: redeliver and recover start a round
    -- When it is due: its next attempt, or, while an attempt is under way,
    -- the end of that attempt's lease (a sender that died mid-attempt
    -- leaves the row to be claimed again then).
    next_at     timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz  -- delivered, or finally failed
);
CREATE INDEX webhook_events_due ON webhook_events (next_at) WHERE state = 'pending';
-- "Is an earlier event of this message still owed to this endpoint?"
CREATE INDEX webhook_events_owed ON webhook_events (webhook_id, message_id, seq)
    WHERE state = 'pending' AND message_id IS NOT NULL;
-- recover (failed since a time) and the purge of old rows.
CREATE INDEX webhook_events_failed ON webhook_events (webhook_id, done_at)
    WHERE state = 'failed';
CREATE INDEX webhook_events_done ON webhook_events (done_at) WHERE state <> 'pending';

-- Every attempt, for GET /webhooks/{id}/deliveries.
CREATE TABLE webhook_attempts (
    event_seq     bigint NOT NULL REFERENCES webhook_events (seq) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    webhook_id    uuid NOT NULL,
    status_code   integer,       -- NULL when no answer came (refused, timeout)
    error         text,          -- NULL on a 2xx
    at            timestamptz NOT NULL,
    next_retry_at timestamptz,   -- NULL once delivered or finally failed
    PRIMARY KEY (event_seq, attempt)
);
CREATE INDEX webhook_attempts_by_webhook ON webhook_attempts (webhook_id, at DESC, event_seq DESC);

-- One event to each enabled endpoint of the account subscribed to its type.
CREATE FUNCTION smsdora_emit(p_account uuid, p_type text, p_message uuid, p_data jsonb,
                             p_at timestamptz) RETURNS integer
    LANGUAGE sql AS $$
    WITH e AS (
        INSERT INTO webhook_events (webhook_id, account_id, type, message_id, data, occurred_at)
        SELECT w.id, p_account, p_type, p_message, p_data, p_at
          FROM webhooks w
         WHERE w.account_id = p_account AND w.enabled AND w.events && ARRAY['*', p_type]
        RETURNING 1)
    SELECT count(*)::integer FROM e
$$;

-- The time as the API writes it (broker/clock.py iso()): UTC, milliseconds.
CREATE FUNCTION smsdora_iso(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"')
$$;

-- Every history row fires one event; `data` is the message as GET
-- /messages/{id} shows it (without history) with the row's status, device
-- and error. A `sent` recorded after `delivered` fires none. One statement
-- per writing statement (a report batch of 500 rows is one INSERT here).
CREATE FUNCTION smsdora_history_events() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (webhook_id, account_id, type, message_id, data, occurred_at)
    SELECT w.id, m.account_id, 'message.' || n.status, n.message_id,
           jsonb_build_object(
               'id', m.id, 'recipient', m.recipient, 'message', m.body, 'status', n.status,
               'device', CASE WHEN n.device_id IS NULL THEN NULL
                              ELSE jsonb_build_object('id', n.device_id, 'deviceName', d.name) END,
               'error', n.error, 'createdAt', smsdora_iso(m.created_at)),
           n.at
      FROM new_rows n
      JOIN messages m ON m.id = n.message_id
      JOIN webhooks w ON w.account_id = m.account_id AND w.enabled
                     AND w.events && ARRAY['*', 'message.' || n.status]
      LEFT JOIN devices d ON d.id = n.device_id
     WHERE NOT (n.status = 'sent' AND EXISTS (
               SELECT 1 FROM message_history h
                WHERE h.message_id = n.message_id AND h.status = 'delivered'))
     -- seq in the lifecycle's order: a send writes queued and dispatching
     -- at the same instant.
     ORDER BY n.message_id, n.at,
              array_position(ARRAY['queued', 'dispatching', 'sending', 'sent', 'delivered',
                                   'failed'], n.status);
    RETURN NULL;
END
$$;
CREATE TRIGGER message_history_events AFTER INSERT ON message_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION smsdora_history_events();

-- Inbound SMS (CONTRACT section 9): stored once per (device, the phone's id).
CREATE TABLE inbox (
    seq         bigserial PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id   uuid NOT NULL,   -- no foreign key, as messages.device_id: kept if the device goes
    phone_id    text NOT NULL,   -- the phone's own id for the SMS
    sender      text NOT NULL,   -- as given: alphanumeric sender ids exist
    body        text NOT NULL,
    sim         integer,
    received_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, phone_id)
);
CREATE INDEX inbox_account_seq ON inbox (account_id, seq DESC);
CREATE INDEX inbox_account_sender_seq ON inbox (account_id, sender, seq DESC);

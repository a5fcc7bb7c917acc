-- The monthly quota, taken in the send's own statement (CONTRACT section 3:
-- "the quota is taken atomically with the message's INSERT, so concurrent
-- sends never overshoot it"): one row per account and month, moved by
-- `UPDATE ... SET used = used + 1 WHERE used < limit` in the INSERT's CTE
-- (store/messages.py). Row locks make it exact under any concurrency, in one
-- process or many. A month's row is made by its first send (store/usage.py),
-- counting what that month already holds.
CREATE TABLE account_usage (
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    month      date NOT NULL,  -- the 1st of the month, UTC
    used       integer NOT NULL CHECK (used >= 0),
    PRIMARY KEY (account_id, month)
) WITH (fillfactor = 50);  -- room on the page: every send's UPDATE is a HOT update

-- The current month's usage from the messages already there.
INSERT INTO account_usage (account_id, month, used)
SELECT account_id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, count(*)
  FROM messages
 WHERE created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
 GROUP BY account_id;

-- Idempotency rows live 24 h; the sweeper deletes older ones oldest first,
-- in bounded batches (CONTRACT section 12).
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Every broker keeps a short negative cache of API-key prefixes that matched
-- no key (broker/keys.py), so that random keys cost no query. A key created,
-- or given a new prefix by a rotation, is announced with its prefix, and
-- every broker forgets that prefix at once.
CREATE FUNCTION smsdora_key_added() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smsdora_key_added', NEW.prefix);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_added AFTER INSERT OR UPDATE OF prefix ON api_keys
    FOR EACH ROW EXECUTE FUNCTION smsdora_key_added();

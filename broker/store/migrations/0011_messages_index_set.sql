-- The index set of messages: only indexes a statement of the broker reads,
-- as EXPLAIN shows them on a spread like a running gateway's
-- (tests/broker/test_indexes.py; the table of which statement reads which
-- index is in docs/PERFORMANCE.md, "The index set of messages"). Every index
-- is written by every send it covers, and again at each change of status: a
-- status change is never a HOT update, status being indexed.

-- No plan reads it: claim_queued and queued_count read
-- messages_account_status_seq (account_id, status, seq DESC), whose
-- (account, 'queued') range holds the same rows in the same order. It cost
-- an index entry for every message that waited in a queue.
DROP INDEX IF EXISTS messages_queued_by_account;

-- GET /messages?recipient= (and the dashboard's filter) was a Seq Scan of
-- the whole table for an account with most of the messages: the newest
-- first of one account's messages to one number, with no index on recipient.
CREATE INDEX messages_account_recipient_seq ON messages (account_id, recipient, seq DESC);

-- GET /messages?device= for a phone with few or no messages (one just
-- paired) was a Seq Scan too (messages_open_by_device holds only open jobs).
-- The same index answers delete_device's "does a message name it?" and the
-- foreign key's check when a device row goes.
CREATE INDEX messages_device_seq ON messages (device_id, seq DESC);

-- Both are built inside this migration's transaction (no CONCURRENTLY:
-- broker/store/migrate.py), so writes to messages wait while they are built.

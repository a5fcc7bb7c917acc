-- An SMS Gateway phone sends a job as soon as it has listed it (`GET
-- /message`), with no receipt to wait for (CONTRACT section 8). So a listed
-- job is held by that phone: it leaves it only after the phone confirmed a
-- cancel. WebSocket phones never list, so these stay NULL for their jobs.
ALTER TABLE messages ADD COLUMN listed_at timestamptz;  -- first listed by its phone
-- NULL, or the hand-back of a listed job: 'requested' (the broker sent
-- MessageCancelled and lists it as Cancelling), 'released' (the phone
-- answered Cancelled: free for another phone, never this one again).
ALTER TABLE messages ADD COLUMN handback text CHECK (handback IN ('requested', 'released'));
-- The sweeper's clock for a listed job with no report (24 h), and the
-- released jobs it moves on.
CREATE INDEX messages_listed ON messages (listed_at)
    WHERE status = 'dispatching' AND listed_at IS NOT NULL;
CREATE INDEX messages_released ON messages (account_id, seq)
    WHERE status = 'dispatching' AND handback = 'released';

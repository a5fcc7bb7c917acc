-- 0004's usage row was one per account and month, and every send of an
-- account waited on it for the previous send's commit (its WAL flush): one
-- account's concurrent sends went one at a time. Now an account's month is
-- STRIPES (64) rows (broker/store/usage.py),
-- each with a cap of its own, the caps summing to the plan's limit: a send
-- takes a unit from a stripe with room, picked at random, so concurrent
-- sends mostly lock different rows, and no stripe passes its cap, so the
-- month never passes the limit. `sized_for` is the limit the caps were cut
-- for: a plan change re-cuts them, under the lock of all the month's rows,
-- to what is used plus an even share of what is left.
DROP TABLE account_usage;
CREATE TABLE account_usage (
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    month      date NOT NULL,      -- the 1st of the month, UTC
    stripe     smallint NOT NULL,  -- 0 .. STRIPES - 1
    used       integer NOT NULL CHECK (used >= 0),
    cap        integer NOT NULL,
    sized_for  integer NOT NULL,   -- the plan's monthly_messages the caps add up to
    PRIMARY KEY (account_id, month, stripe)
) WITH (fillfactor = 50);  -- room on the page: every send's UPDATE is a HOT update

-- The current month's usage from the messages already there, all in stripe
-- 0, the rest of the plan shared out (as store/usage.py opens a month).
INSERT INTO account_usage (account_id, month, stripe, used, cap, sized_for)
SELECT a.id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, s,
       CASE WHEN s = 0 THEN c.n ELSE 0 END,
       CASE WHEN s = 0 THEN c.n ELSE 0 END
         + GREATEST(0, p.monthly_messages - c.n) / 64
         + (s < GREATEST(0, p.monthly_messages - c.n) % 64)::int,
       p.monthly_messages
  FROM (SELECT account_id, count(*)::int AS n FROM messages
         WHERE created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         GROUP BY account_id) c
  JOIN accounts a ON a.id = c.account_id
  JOIN plans p ON p.name = a.plan
 CROSS JOIN generate_series(0, 63) s;

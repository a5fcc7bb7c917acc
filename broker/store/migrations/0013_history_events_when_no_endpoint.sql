-- The history trigger (0006, as 0007 left it) looked for webhook endpoints
-- by joining every new history row to its message, then to the account's
-- endpoints, and built the hashed "already delivered" check over the
-- history first: a fifth of PostgreSQL's CPU at 600 sends a second with no
-- endpoint anywhere (docs/PERFORMANCE.md, "The history trigger with no
-- endpoint"). With no enabled endpoint at all (one probe of the partial
-- index webhooks_account_enabled) there is nothing to write: it returns
-- at once. Otherwise it writes what it wrote, the "already delivered"
-- check now only for the rows of accounts with an endpoint.
CREATE OR REPLACE FUNCTION smsdora_history_events() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
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
     -- `w.id IS NOT NULL` (always true here) ties the check to the join with
     -- the endpoints, so that it runs only for rows that have one: left on
     -- the new rows alone, it was planned before the joins, as a hash of
     -- every delivered row of the history.
     WHERE NOT (n.status = 'sent' AND w.id IS NOT NULL AND EXISTS (
               SELECT 1 FROM message_history h
                WHERE h.message_id = n.message_id AND h.status = 'delivered')
            AND NOT EXISTS (
               SELECT 1 FROM new_rows x
                WHERE x.message_id = n.message_id AND x.status = 'delivered'))
     -- seq in the lifecycle's order: a send writes queued and dispatching
     -- at the same instant.
     ORDER BY n.message_id, n.at,
              array_position(ARRAY['queued', 'dispatching', 'sending', 'sent', 'delivered',
                                   'failed'], n.status);
    RETURN NULL;
END
$$;

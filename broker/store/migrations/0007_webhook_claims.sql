-- Which node claimed a webhook event for its attempt under way. A node
-- that starts again (after a crash, SIGKILL, power loss) releases what it
-- had claimed before: those attempts died with it, and without this their
-- events (and every later event of their messages, by the order rule)
-- waited for the lease to end (the attempt's timeout + 30 s). Another node
-- that dies is still covered by the lease.
ALTER TABLE webhook_events ADD COLUMN claimed_by text;

-- A `sent` fires no event only when `delivered` was recorded by an earlier
-- statement (CONTRACT section 9: "a sent recorded after delivered"). 0006
-- also skipped it when both came in one statement (a phone reporting both
-- in one batch of the report writer): the AFTER trigger sees the whole
-- statement's rows, the delivered one among them. Both fire now, in the
-- lifecycle's order.
CREATE OR REPLACE FUNCTION smsdora_history_events() RETURNS trigger
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

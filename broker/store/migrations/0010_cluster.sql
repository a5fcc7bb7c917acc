-- Several nodes (CONTRACT section 13): each broker process holds a lease on
-- its node name, renewed every few seconds, and the phones connected to it
-- are rows here. A node whose lease lapsed holds nobody: every read of who
-- is online where joins the live leases (broker/store/cluster.py).
CREATE TABLE nodes (
    name        text PRIMARY KEY,            -- SMSDORA_NODE
    epoch       uuid NOT NULL,               -- random, new at every process start
    lease_until timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    address     text                         -- where the other nodes reach it (later)
);

-- One row per online phone. No foreign key to devices: a row is written in
-- batches, and one device deleted meanwhile must not fail a whole storm's
-- batch; its connection ends and takes the row with it.
CREATE TABLE presence (
    device_id    uuid PRIMARY KEY,
    node         text NOT NULL,
    epoch        uuid NOT NULL,
    connected_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX presence_by_node ON presence (node, epoch);

-- device.online / device.offline, `data` the device as GET /devices shows it
-- (what the connection knew, over the row): written by the node that holds
-- the phone, and by the one that reaps a dead node's phones.
CREATE FUNCTION smsdora_device_event(d devices, p_online boolean, p_at timestamptz,
                                     p_health jsonb, p_ver text) RETURNS integer
    LANGUAGE sql AS $$
    SELECT smsdora_emit(d.account_id,
        CASE WHEN p_online THEN 'device.online' ELSE 'device.offline' END, NULL,
        jsonb_build_object('id', d.id, 'deviceName', d.name, 'online', p_online,
            'lastSeen', smsdora_iso(p_at), 'active', d.active, 'sendRate', d.send_rate,
            'health', COALESCE(p_health, d.health),
            'appVersion', COALESCE(p_ver, d.app_version), 'transport', d.transport), p_at)
$$;

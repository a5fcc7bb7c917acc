-- Phones on the SMS Gateway for Android app (CONTRACT section 8) beside the
-- phones on our WebSocket protocol.
ALTER TABLE devices ADD COLUMN transport text NOT NULL DEFAULT 'websocket'
    CHECK (transport IN ('websocket', 'smsgate'));
ALTER TABLE devices ADD COLUMN push_token text;  -- as the app sent it (unused: SSE only)
ALTER TABLE devices ADD COLUMN sim_cards jsonb;  -- the app's SIM list, redacted by the app

-- One-time codes that register a phone into an account (the app's "By
-- code"): 6 characters, 10 minutes, single use; only a keyed hash is kept.
CREATE TABLE pairing_codes (
    code_hash  bytea PRIMARY KEY,             -- HMAC-SHA256(server secret, code)
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pairing_codes_account ON pairing_codes (account_id);

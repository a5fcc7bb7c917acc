-- The dashboard (CONTRACT section 11): a person's sessions, kept in
-- PostgreSQL so that they survive a restart and work on every node. The
-- cookie holds a random token; only its SHA-256 is stored (the token is 32
-- random bytes: no slow hash needed, and none is on the hot path). Each
-- session has its own CSRF token for the forms it renders.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_account ON sessions (account_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- When an API key was last used (the dashboard's key list), written at most
-- once a minute per key and node, after the request.
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- The admin dashboard's sessions, owned by the HTTP layer (src/http/session.rs). The cookie
-- holds a random session id; only its SHA-256 is stored, beside the SHA-256 of the admin
-- credential that opened it, so a session ends with that credential (a revoked admin token,
-- a changed bootstrap token) as well as at its expiry or at logout.
CREATE SCHEMA admin;
COMMENT ON SCHEMA admin IS 'State of the admin dashboard: its sessions.';

CREATE TABLE admin.sessions (
    id_hash         text        PRIMARY KEY,
    credential_hash text        NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX sessions_expires_idx ON admin.sessions (expires_at);
COMMENT ON TABLE admin.sessions IS 'Open dashboard sessions; a row is deleted at logout and swept after it expires. `SELECT created_at, expires_at FROM admin.sessions` shows who could act now; `DELETE FROM admin.sessions` logs everyone out.';
COMMENT ON COLUMN admin.sessions.id_hash IS 'SHA-256 (hex) of the session id in the cookie; the id itself is never stored.';
COMMENT ON COLUMN admin.sessions.credential_hash IS 'SHA-256 (hex) of the admin token that logged in: the session is valid only while that token is (the bootstrap token unchanged, or the admin-scope API token not revoked).';
COMMENT ON COLUMN admin.sessions.created_at IS 'When the admin logged in.';
COMMENT ON COLUMN admin.sessions.expires_at IS 'When the session ends by itself, however active (an absolute lifetime).';

-- Column comments V13 left out, so every schema of the service is described in psql (\d+).
COMMENT ON COLUMN scim.cursor_key.singleton IS 'Always true: the table holds one row.';
COMMENT ON COLUMN scim.cursor_key.secret IS 'The HMAC-SHA256 key; UPDATE it to rotate (cursors issued before stop working).';

-- The key that signs SCIM list cursors (RFC 9865), one per deployment so that every node
-- accepts the cursors of every other. Made here from gen_random_uuid() (pg_strong_random):
-- 32 bytes, 244 of them random bits. Rotating it (UPDATE scim.cursor_key SET secret = ...)
-- invalidates the cursors issued before; clients then start their paging again.
CREATE SCHEMA scim;

CREATE TABLE scim.cursor_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret    bytea   NOT NULL CHECK (length(secret) >= 16)
);

INSERT INTO scim.cursor_key (secret)
VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

COMMENT ON TABLE scim.cursor_key IS 'The HMAC key of SCIM list cursors (nextCursor/previousCursor); read by each node at start.';

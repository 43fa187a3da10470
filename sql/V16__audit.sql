-- The audit trail: who changed what, read from the log. Events record their actor and
-- request in `metadata` (see the README, "Request ids and who changed what"); this view
-- shows them as columns, with the payload's secrets left out. API tokens gain an `audit`
-- scope, for the audit endpoint of their organization.

DO $$
DECLARE c text;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
              WHERE conrelid = 'projections.api_tokens'::regclass AND contype = 'c'
                AND pg_get_constraintdef(oid) LIKE '%scope%'
    LOOP
        EXECUTE format('ALTER TABLE projections.api_tokens DROP CONSTRAINT %I', c);
    END LOOP;
END $$;
ALTER TABLE projections.api_tokens
    ADD CONSTRAINT api_tokens_scope_check CHECK (scope IN ('scim', 'admin', 'audit'));
COMMENT ON COLUMN projections.api_tokens.scope IS 'scim (provisioning), admin, or audit (reading the organization''s audit trail).';

CREATE VIEW eventstore.audit AS
SELECT e.tx,
       e.seq,
       e.tx || '/' || e.seq AS position,
       e.org_id,
       e.aggregate_type AS resource_type,
       e.aggregate_id AS resource_id,
       e.version,
       e.event_type,
       e.payload - 'hash' - 'code_hash' - 'token_hash' AS payload,
       e.metadata -> 'actor' AS actor,
       coalesce(e.metadata -> 'actor' ->> 'token_id', e.metadata -> 'actor' ->> 'kind') AS actor_id,
       e.metadata ->> 'request_id' AS request_id,
       e.metadata ->> 'operation' AS operation,
       e.metadata ->> 'bulk_id' AS bulk_id,
       e.metadata ->> 'client_addr' AS client_addr,
       e.metadata ->> 'user_agent' AS user_agent,
       e.created_at AS at
  FROM eventstore.events e;
COMMENT ON VIEW eventstore.audit IS 'Who changed what: every event with its actor and request as columns, secrets left out of the payload. The history of one user: SELECT * FROM eventstore.audit WHERE resource_id = ''...'' ORDER BY tx, seq.';
COMMENT ON COLUMN eventstore.audit.tx IS 'First part of the position (see eventstore.events.tx).';
COMMENT ON COLUMN eventstore.audit.seq IS 'Second part of the position.';
COMMENT ON COLUMN eventstore.audit.position IS 'The position as people write it: tx/seq.';
COMMENT ON COLUMN eventstore.audit.org_id IS 'The organization.';
COMMENT ON COLUMN eventstore.audit.resource_type IS 'What changed: user, group, token, org.';
COMMENT ON COLUMN eventstore.audit.resource_id IS 'Its id (the SCIM id for users and groups).';
COMMENT ON COLUMN eventstore.audit.version IS 'The resource''s version after the change.';
COMMENT ON COLUMN eventstore.audit.event_type IS 'The change: user.added, group.member.added, ...';
COMMENT ON COLUMN eventstore.audit.payload IS 'What changed (the event''s payload) without its hashes of passwords, tokens and codes.';
COMMENT ON COLUMN eventstore.audit.actor IS 'Who: {"kind": "token", "token_id", "name", "scope"}, bootstrap_admin, dashboard_session, verification_link, cli (with the OS user), service; NULL for events written before actors were recorded.';
COMMENT ON COLUMN eventstore.audit.actor_id IS 'The actor as one value to filter on: the token id for tokens, else its kind.';
COMMENT ON COLUMN eventstore.audit.request_id IS 'The request id (X-Request-Id) of the change: the same id is in the service''s log.';
COMMENT ON COLUMN eventstore.audit.operation IS 'What was asked: POST /Users, PATCH /Groups/{id}, Bulk POST /Users, portcullis tokens create, ...';
COMMENT ON COLUMN eventstore.audit.bulk_id IS 'The bulkId of the SCIM Bulk operation, when there was one.';
COMMENT ON COLUMN eventstore.audit.client_addr IS 'The client''s address as the service saw it (a proxy''s, behind one).';
COMMENT ON COLUMN eventstore.audit.user_agent IS 'The client''s User-Agent, at most 256 characters.';
COMMENT ON COLUMN eventstore.audit.at IS 'When (the start of the writing transaction).';

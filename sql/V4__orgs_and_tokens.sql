-- Read models of organizations and API tokens.

CREATE TABLE projections.orgs (
    org_id     uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL
);
COMMENT ON TABLE projections.orgs IS 'Read model of the orgs projection: the organizations (tenants).';
COMMENT ON COLUMN projections.orgs.org_id IS 'The organization''s id (its aggregate id).';
COMMENT ON COLUMN projections.orgs.name IS 'Its name.';
COMMENT ON COLUMN projections.orgs.created_at IS 'When it was created.';

CREATE TABLE projections.api_tokens (
    token_id   uuid        PRIMARY KEY,
    org_id     uuid        NOT NULL,
    scope      text        NOT NULL CHECK (scope IN ('scim', 'admin')),
    name       text,
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX api_tokens_org_idx ON projections.api_tokens (org_id);
COMMENT ON TABLE projections.api_tokens IS 'Read model of the api_tokens projection: API tokens by the SHA-256 of their value (the value itself is never stored).';
COMMENT ON COLUMN projections.api_tokens.token_id IS 'The token''s id (its aggregate id); what `portcullis tokens revoke` takes.';
COMMENT ON COLUMN projections.api_tokens.org_id IS 'The organization the token acts for.';
COMMENT ON COLUMN projections.api_tokens.scope IS 'scim (provisioning) or admin.';
COMMENT ON COLUMN projections.api_tokens.name IS 'A label chosen when it was issued.';
COMMENT ON COLUMN projections.api_tokens.token_hash IS 'Hex SHA-256 of the token; requests are checked against it.';
COMMENT ON COLUMN projections.api_tokens.created_at IS 'When it was issued.';
COMMENT ON COLUMN projections.api_tokens.revoked_at IS 'When it was revoked; a revoked token is refused.';
COMMENT ON INDEX projections.api_tokens_org_idx IS 'An organization''s tokens.';

-- Read models of users, their emails, groups and group memberships (the SCIM resources).
-- Attributes SCIM filters on most are columns with indexes; the rest of a resource is in `doc`.

-- Trigram indexes make `emails co "x"` an index search instead of a scan.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE projections.users (
    user_id      uuid        PRIMARY KEY,
    org_id       uuid        NOT NULL,
    user_name    text        NOT NULL,
    external_id  text,
    display_name text,
    active       boolean     NOT NULL DEFAULT true,
    doc          jsonb       NOT NULL,
    version      bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX users_org_user_name_idx ON projections.users (org_id, lower(user_name) text_pattern_ops);
CREATE INDEX users_org_external_id_idx ON projections.users (org_id, external_id);
CREATE INDEX users_org_created_idx ON projections.users (org_id, created_at, user_id);
COMMENT ON TABLE projections.users IS 'Read model of the users projection: one row per user that exists (deleted users are removed).';
COMMENT ON COLUMN projections.users.user_id IS 'The user''s id (its aggregate id; the SCIM id).';
COMMENT ON COLUMN projections.users.org_id IS 'The organization the user belongs to.';
COMMENT ON COLUMN projections.users.user_name IS 'userName as written; unique per org case-insensitively (eventstore.unique_constraints user.user_name).';
COMMENT ON COLUMN projections.users.external_id IS 'externalId: the provisioning client''s own id.';
COMMENT ON COLUMN projections.users.display_name IS 'displayName.';
COMMENT ON COLUMN projections.users.active IS 'false when deactivated; a deactivated user still exists.';
COMMENT ON COLUMN projections.users.doc IS 'Every other SCIM attribute, canonical names, as the user''s events left them (never the password).';
COMMENT ON COLUMN projections.users.version IS 'The aggregate version of the last event applied: the SCIM ETag W/"version".';
COMMENT ON COLUMN projections.users.created_at IS 'When the user was created (meta.created).';
COMMENT ON COLUMN projections.users.updated_at IS 'When the user last changed (meta.lastModified).';
COMMENT ON INDEX projections.users_org_user_name_idx IS 'userName eq / sw filters (case-insensitive) without a scan.';
COMMENT ON INDEX projections.users_org_external_id_idx IS 'externalId eq filters.';
COMMENT ON INDEX projections.users_org_created_idx IS 'The default list order: stable between pages.';

CREATE TABLE projections.user_emails (
    user_id    uuid    NOT NULL REFERENCES projections.users ON DELETE CASCADE,
    ord        int     NOT NULL,
    org_id     uuid    NOT NULL,
    value      text    NOT NULL,
    type       text,
    is_primary boolean NOT NULL DEFAULT false,
    display    text,
    PRIMARY KEY (user_id, ord)
);
CREATE INDEX user_emails_value_idx ON projections.user_emails (org_id, lower(value) text_pattern_ops);
CREATE INDEX user_emails_value_trgm_idx ON projections.user_emails USING gin (lower(value) gin_trgm_ops);
COMMENT ON TABLE projections.user_emails IS 'Read model of the users projection: each user''s email addresses, one row per value, for email filters.';
COMMENT ON COLUMN projections.user_emails.user_id IS 'The user.';
COMMENT ON COLUMN projections.user_emails.ord IS 'Position of the value in the user''s emails (0-based).';
COMMENT ON COLUMN projections.user_emails.org_id IS 'The user''s organization.';
COMMENT ON COLUMN projections.user_emails.value IS 'The address as written.';
COMMENT ON COLUMN projections.user_emails.type IS 'work, home, other, ...';
COMMENT ON COLUMN projections.user_emails.is_primary IS 'The primary address (at most one per user).';
COMMENT ON COLUMN projections.user_emails.display IS 'A display label.';
COMMENT ON INDEX projections.user_emails_value_idx IS 'emails eq / sw filters.';
COMMENT ON INDEX projections.user_emails_value_trgm_idx IS 'emails co / ew filters (trigram).';

CREATE TABLE projections.groups (
    group_id     uuid        PRIMARY KEY,
    org_id       uuid        NOT NULL,
    display_name text        NOT NULL,
    external_id  text,
    version      bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX groups_org_display_name_idx ON projections.groups (org_id, lower(display_name) text_pattern_ops);
CREATE INDEX groups_org_created_idx ON projections.groups (org_id, created_at, group_id);
COMMENT ON TABLE projections.groups IS 'Read model of the groups projection: one row per group that exists.';
COMMENT ON COLUMN projections.groups.group_id IS 'The group''s id (its aggregate id; the SCIM id).';
COMMENT ON COLUMN projections.groups.org_id IS 'The organization the group belongs to.';
COMMENT ON COLUMN projections.groups.display_name IS 'displayName; unique per org case-insensitively (eventstore.unique_constraints group.display_name).';
COMMENT ON COLUMN projections.groups.external_id IS 'externalId: the provisioning client''s own id.';
COMMENT ON COLUMN projections.groups.version IS 'The aggregate version of the last event applied: the SCIM ETag W/"version".';
COMMENT ON COLUMN projections.groups.created_at IS 'When the group was created (meta.created).';
COMMENT ON COLUMN projections.groups.updated_at IS 'When the group last changed (meta.lastModified).';
COMMENT ON INDEX projections.groups_org_display_name_idx IS 'displayName eq / sw filters (case-insensitive).';
COMMENT ON INDEX projections.groups_org_created_idx IS 'The default list order: stable between pages.';

CREATE TABLE projections.group_members (
    group_id    uuid        NOT NULL REFERENCES projections.groups ON DELETE CASCADE,
    member_id   uuid        NOT NULL,
    org_id      uuid        NOT NULL,
    member_type text        NOT NULL CHECK (member_type IN ('User', 'Group')),
    added_at    timestamptz NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE INDEX group_members_member_idx ON projections.group_members (member_id);
COMMENT ON TABLE projections.group_members IS 'Read model of the groups projection: direct members of each group (users or groups).';
COMMENT ON COLUMN projections.group_members.group_id IS 'The group.';
COMMENT ON COLUMN projections.group_members.member_id IS 'The member: a user id or a group id.';
COMMENT ON COLUMN projections.group_members.org_id IS 'The group''s organization.';
COMMENT ON COLUMN projections.group_members.member_type IS 'User or Group.';
COMMENT ON COLUMN projections.group_members.added_at IS 'When the member was added; members are listed in this order.';
COMMENT ON INDEX projections.group_members_member_idx IS 'The groups a user or group is in (User.groups).';

-- User.groups: direct memberships and those through nested groups. UNION (not UNION ALL)
-- ends the recursion even when groups contain each other.
CREATE FUNCTION projections.user_groups(member uuid)
RETURNS TABLE (group_id uuid, display_name text, direct boolean)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE g(group_id, direct) AS (
        SELECT m.group_id, true FROM projections.group_members m WHERE m.member_id = member
        UNION
        SELECT m.group_id, false FROM projections.group_members m JOIN g ON m.member_id = g.group_id
    )
    SELECT g.group_id, gr.display_name, bool_or(g.direct)
      FROM g JOIN projections.groups gr ON gr.group_id = g.group_id
     GROUP BY g.group_id, gr.display_name
     ORDER BY gr.display_name, g.group_id
$$;
COMMENT ON FUNCTION projections.user_groups(uuid) IS 'The groups a user (or group) is in, directly or through nested groups: SCIM User.groups. direct = false means through another group.';

-- Email verification: the mail outbox, the verified address in the users read model, and
-- organization settings.

CREATE SCHEMA mail;
COMMENT ON SCHEMA mail IS 'Mail waiting to be sent (the outbox the mail worker drains).';

CREATE TABLE mail.outbox (
    id              uuid        PRIMARY KEY,
    org_id          uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    request_id      uuid        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('email_verification')),
    to_address      text        NOT NULL,
    secret          jsonb       NOT NULL,
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    failed_at       timestamptz,
    created_at      timestamptz NOT NULL
);
CREATE INDEX outbox_due_idx ON mail.outbox (next_attempt_at) WHERE failed_at IS NULL;
COMMENT ON TABLE mail.outbox IS 'Mail to send, written in the same transaction as the event that asks for it and deleted once sent. The only place a plain verification code or link token exists, and only until the mail is out.';
COMMENT ON COLUMN mail.outbox.id IS 'The row''s id.';
COMMENT ON COLUMN mail.outbox.org_id IS 'The user''s organization.';
COMMENT ON COLUMN mail.outbox.user_id IS 'The user the mail is for.';
COMMENT ON COLUMN mail.outbox.request_id IS 'The verification request (user.email.verification.requested) it carries.';
COMMENT ON COLUMN mail.outbox.kind IS 'What mail: email_verification.';
COMMENT ON COLUMN mail.outbox.to_address IS 'Recipient.';
COMMENT ON COLUMN mail.outbox.secret IS 'The plain code and link token for the mail; gone with the row once sent.';
COMMENT ON COLUMN mail.outbox.attempts IS 'Failed sending attempts so far.';
COMMENT ON COLUMN mail.outbox.next_attempt_at IS 'Not before this time (backoff after a failure).';
COMMENT ON COLUMN mail.outbox.last_error IS 'Why the last attempt failed.';
COMMENT ON COLUMN mail.outbox.failed_at IS 'When the worker gave up (after the configured attempts); the row stays for an operator.';
COMMENT ON COLUMN mail.outbox.created_at IS 'When the mail was asked for.';
COMMENT ON INDEX mail.outbox_due_idx IS 'What the worker claims next.';

-- Wakes the mail workers of every process; the payload is only a hint.
CREATE FUNCTION mail.notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mail_outbox', '');
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION mail.notify_outbox() IS 'Statement trigger: NOTIFY mail_outbox after rows are added.';
CREATE TRIGGER outbox_notify AFTER INSERT ON mail.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION mail.notify_outbox();

ALTER TABLE projections.users ADD COLUMN verified_email text;
COMMENT ON COLUMN projections.users.verified_email IS 'The email address the user verified (user.email.verified); NULL again when the address changes.';

ALTER TABLE projections.orgs ADD COLUMN verify_email_on_change boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN projections.orgs.verify_email_on_change IS 'Whether a verified address that SCIM changes gets a new verification code at once (org.settings.changed).';

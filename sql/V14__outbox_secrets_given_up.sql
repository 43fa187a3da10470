-- A mail the worker gives up on loses its secrets: the row stays for an operator to see why,
-- the plain code and link token do not, and the request they belonged to is closed by a
-- `user.email.verification.undelivered` event in the same transaction.
COMMENT ON COLUMN mail.outbox.secret IS 'The plain code and link token for the mail, until it is sent (the row is deleted) or given up (emptied to {}); never anywhere else.';
COMMENT ON COLUMN mail.outbox.failed_at IS 'When the worker gave up (after the configured attempts); the row stays for an operator, without its secret, and the verification request is closed.';

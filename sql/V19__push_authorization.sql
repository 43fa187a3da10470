-- Push receivers usually require the transmitter to authenticate (RFC 8935 §2.2), most often
-- with a bearer token. It is sent on every push, so it cannot be stored as a hash; it is
-- write-only (no API or listing shows it) and never logged.

ALTER TABLE secevents.receivers ADD COLUMN push_authorization text
    CHECK (push_authorization IS NULL OR delivery = 'push');
COMMENT ON COLUMN secevents.receivers.push_authorization IS 'The Authorization header value sent with every push (e.g. "Bearer ..."), as the receiver issued it. Write-only: never shown by the service, never logged.';

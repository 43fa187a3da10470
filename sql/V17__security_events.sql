-- SCIM security events (RFC 9967) as signed Security Event Tokens (RFC 8417), delivered to
-- registered receivers by push (RFC 8935) or poll (RFC 8936). Each receiver reads the log
-- from its own checkpoint (a position, moved in the same transaction that queues the SETs it
-- made), so delivery is at-least-once and in log order. Owned by the service's `secevents`
-- layer.

CREATE SCHEMA secevents;
COMMENT ON SCHEMA secevents IS 'SCIM security events: signing keys, receivers (each a checkpointed reader of the log), and the SETs queued for them.';

CREATE TABLE secevents.signing_keys (
    kid         text        PRIMARY KEY,
    org_id      uuid        NOT NULL,
    algorithm   text        NOT NULL DEFAULT 'ES256' CHECK (algorithm = 'ES256'),
    private_key bytea       NOT NULL,
    public_jwk  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active_idx ON secevents.signing_keys (org_id) WHERE retired_at IS NULL;
COMMENT ON TABLE secevents.signing_keys IS 'Per organization: the keys SETs are signed with. One is active (retired_at NULL); rotating retires it and makes a new one. Retired keys stay published in the JWKS, so SETs signed before still verify, until removed.';
COMMENT ON COLUMN secevents.signing_keys.kid IS 'Key id: the JWS "kid" header of every SET it signs and the "kid" of its JWK.';
COMMENT ON COLUMN secevents.signing_keys.private_key IS 'The ECDSA P-256 private key, PKCS#8 DER. Never leaves the service.';
COMMENT ON COLUMN secevents.signing_keys.public_jwk IS 'The public key as a JWK (RFC 7517), as the JWKS endpoint publishes it.';
COMMENT ON COLUMN secevents.signing_keys.retired_at IS 'When a rotation replaced it: it signs nothing new, and still verifies.';

CREATE TABLE secevents.receivers (
    id              uuid        PRIMARY KEY,
    org_id          uuid        NOT NULL,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    delivery        text        NOT NULL CHECK (delivery IN ('push', 'poll')),
    endpoint        text        CHECK ((delivery = 'push') = (endpoint IS NOT NULL)),
    poll_token_hash text        UNIQUE CHECK ((delivery = 'poll') = (poll_token_hash IS NOT NULL)),
    audience        text        NOT NULL,
    event_uris      text[]      NOT NULL CHECK (cardinality(event_uris) > 0),
    position_tx     bigint      NOT NULL,
    position_seq    bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    queued_total    bigint      NOT NULL DEFAULT 0,
    delivered_total bigint      NOT NULL DEFAULT 0,
    last_delivered_at timestamptz,
    failures        integer     NOT NULL DEFAULT 0,
    last_error      text,
    last_error_at   timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_by       text,
    lease_until     timestamptz
);
CREATE INDEX receivers_org_idx ON secevents.receivers (org_id);
COMMENT ON TABLE secevents.receivers IS 'Who gets the organization''s SCIM security events, how, and how far it has read the log.';
COMMENT ON COLUMN secevents.receivers.delivery IS 'push: the service POSTs each SET to endpoint (RFC 8935). poll: the receiver fetches and acknowledges SETs (RFC 8936) with its token.';
COMMENT ON COLUMN secevents.receivers.poll_token_hash IS 'SHA-256 (hex) of a poll receiver''s bearer token; the token itself is shown once, at registration.';
COMMENT ON COLUMN secevents.receivers.audience IS 'The "aud" claim of its SETs.';
COMMENT ON COLUMN secevents.receivers.event_uris IS 'The event URIs it wants, e.g. urn:ietf:params:scim:event:prov:create:full.';
COMMENT ON COLUMN secevents.receivers.position_tx IS 'Checkpoint: the log has been read up to this position (tx part) and its SETs queued.';
COMMENT ON COLUMN secevents.receivers.position_seq IS 'Checkpoint, seq part.';
COMMENT ON COLUMN secevents.receivers.failures IS 'Push attempts that failed in a row (0 once one succeeds); the next waits with backoff.';
COMMENT ON COLUMN secevents.receivers.next_attempt_at IS 'No push before then (the backoff after a failure).';
COMMENT ON COLUMN secevents.receivers.leased_by IS 'The service process that delivers for it now; another takes over once lease_until has passed.';

CREATE TABLE secevents.pending (
    receiver_id uuid        NOT NULL REFERENCES secevents.receivers ON DELETE CASCADE,
    jti         text        NOT NULL,
    tx          bigint      NOT NULL,
    seq         bigint      NOT NULL,
    subject     text        NOT NULL,
    token       text        NOT NULL,
    event_at    timestamptz NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 0,
    rejected_at timestamptz,
    rejection   text,
    PRIMARY KEY (receiver_id, jti)
);
CREATE INDEX pending_order_idx ON secevents.pending (receiver_id, tx, seq);
COMMENT ON TABLE secevents.pending IS 'SETs made for a receiver and not yet acknowledged (push: answered 202; poll: acked). Deleted on acknowledgement.';
COMMENT ON COLUMN secevents.pending.tx IS 'Position (tx part) of the change it reports: its "txn" claim is tx/seq.';
COMMENT ON COLUMN secevents.pending.subject IS 'The sub_id uri, e.g. /Users/{id}: SETs of one subject are delivered in log order.';
COMMENT ON COLUMN secevents.pending.token IS 'The signed SET (a compact JWS), sent as is on every attempt.';
COMMENT ON COLUMN secevents.pending.event_at IS 'When the change was committed.';
COMMENT ON COLUMN secevents.pending.rejected_at IS 'The receiver refused this SET (push: HTTP 400; poll: setErrs); it is not sent again until `portcullis receivers retry`.';

INSERT INTO eventstore.position_holders VALUES
    ('secevents.receivers', 'position_tx'),
    ('secevents.pending', 'tx');

-- What an operator watches: per receiver, how far behind the log it is and what fails.
CREATE VIEW secevents.receiver_health AS
SELECT r.id,
       r.org_id,
       r.name,
       r.delivery,
       r.position_tx || '/' || r.position_seq AS position,
       (SELECT count(*) FROM eventstore.events e
         WHERE e.org_id = r.org_id AND (e.tx, e.seq) > (r.position_tx, r.position_seq)) AS events_unread,
       coalesce(p.waiting, 0) AS pending,
       coalesce(p.rejected, 0) AS rejected,
       coalesce(extract(epoch FROM now() - p.oldest), 0)::double precision AS lag_seconds,
       r.delivered_total,
       r.last_delivered_at,
       r.failures,
       r.last_error,
       r.last_error_at,
       r.next_attempt_at,
       r.leased_by,
       CASE WHEN coalesce(p.rejected, 0) > 0 THEN 'rejected'
            WHEN r.failures > 0 THEN 'retrying'
            ELSE 'ok' END AS status
  FROM secevents.receivers r
  LEFT JOIN LATERAL (
      SELECT count(*) FILTER (WHERE rejected_at IS NULL) AS waiting,
             count(*) FILTER (WHERE rejected_at IS NOT NULL) AS rejected,
             min(event_at) FILTER (WHERE rejected_at IS NULL) AS oldest
        FROM secevents.pending WHERE receiver_id = r.id) p ON true;
COMMENT ON VIEW secevents.receiver_health IS 'Per receiver: its checkpoint, events of its organization not read yet, SETs waiting and refused, the age of the oldest waiting change (lag_seconds), deliveries and the failures in a row. status: ok, retrying (pushes fail; backing off) or rejected (the receiver refused SETs).';
COMMENT ON COLUMN secevents.receiver_health.events_unread IS 'Events of the organization past the checkpoint (each makes zero or more SETs).';
COMMENT ON COLUMN secevents.receiver_health.lag_seconds IS 'How long ago the oldest change still waiting for acknowledgement was committed (0: nothing waits).';

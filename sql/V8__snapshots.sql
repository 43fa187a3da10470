-- Snapshots of aggregates with long histories (groups with many members): a cache of what
-- folding their events gives, so a command reads the snapshot and the events after it.
-- Derived data: deleting any or all rows is always safe.

CREATE TABLE eventstore.snapshots (
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    org_id         uuid        NOT NULL,
    version        bigint      NOT NULL CHECK (version > 0),
    position_tx    bigint      NOT NULL,
    position_seq   bigint      NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
COMMENT ON TABLE eventstore.snapshots IS 'The folded state of an aggregate at a version, so commands need not read its whole history. A cache: rows may be deleted at any time.';
COMMENT ON COLUMN eventstore.snapshots.aggregate_type IS 'Type of the aggregate.';
COMMENT ON COLUMN eventstore.snapshots.aggregate_id IS 'Id of the aggregate.';
COMMENT ON COLUMN eventstore.snapshots.org_id IS 'Its organization.';
COMMENT ON COLUMN eventstore.snapshots.version IS 'The state includes every event up to this version.';
COMMENT ON COLUMN eventstore.snapshots.position_tx IS 'Position of the event at that version, tx part.';
COMMENT ON COLUMN eventstore.snapshots.position_seq IS 'Position of the event at that version, seq part.';
COMMENT ON COLUMN eventstore.snapshots.state IS 'The folded state, as the domain serializes it.';
COMMENT ON COLUMN eventstore.snapshots.taken_at IS 'When the snapshot was written.';

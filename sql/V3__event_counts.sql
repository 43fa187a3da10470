-- The first read model: how many events of each type every organization has. Small, but it
-- counts, so an event applied twice or missed shows at once.

CREATE TABLE projections.event_counts (
    org_id        uuid   NOT NULL,
    event_type    text   NOT NULL,
    events        bigint NOT NULL,
    last_position text   NOT NULL,
    PRIMARY KEY (org_id, event_type)
);
COMMENT ON TABLE projections.event_counts IS 'Read model of the event_counts projection: events per organization and type.';
COMMENT ON COLUMN projections.event_counts.org_id IS 'The organization.';
COMMENT ON COLUMN projections.event_counts.event_type IS 'The event type.';
COMMENT ON COLUMN projections.event_counts.events IS 'How many events of this type the organization has.';
COMMENT ON COLUMN projections.event_counts.last_position IS 'Position (tx/seq) of the last one counted.';

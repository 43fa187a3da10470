-- The CHECKs on eventstore.events' aggregate_type and event_type called SQL functions.
-- PostgreSQL prepares a table's CHECK expressions at every INSERT statement, and inlining a SQL
-- function means parsing and analysing its body each time: a few percent of the server's CPU
-- on every append. The same rules, written out (eventstore.valid_event_type and
-- valid_aggregate_type stay, for anyone who calls them). Adding the constraints checks the
-- existing log once.

ALTER TABLE eventstore.events
    ADD CONSTRAINT events_aggregate_type_valid
        CHECK (length(aggregate_type) <= 64 AND aggregate_type ~ '^[a-z][a-z0-9_]*$'),
    ADD CONSTRAINT events_event_type_valid
        CHECK (length(event_type) <= 128 AND event_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    DROP CONSTRAINT events_aggregate_type_check,
    DROP CONSTRAINT events_event_type_check;

COMMENT ON CONSTRAINT events_aggregate_type_valid ON eventstore.events IS
    'Aggregate types are one lower-case word of at most 64 characters (as eventstore.valid_aggregate_type).';
COMMENT ON CONSTRAINT events_event_type_valid ON eventstore.events IS
    'Event types are dotted lower-case words, at least two, at most 128 characters (as eventstore.valid_event_type).';

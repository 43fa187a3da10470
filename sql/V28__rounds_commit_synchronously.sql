-- A round that applies events commits synchronously from now on: a SCIM create's append
-- commits without waiting for its WAL flush (EventStore::deferring), and the flush of the
-- round that applies it makes it durable before the client is answered. The check of a round
-- from known events no longer switches its commit to asynchronous.
CREATE OR REPLACE FUNCTION projections.known_round(
    names text[], from_tx bigint, from_seq bigint, to_tx bigint, to_seq bigint,
    event_types text[], expected bigint, own_hub uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found bigint;
BEGIN
    -- The same lock every runner of a projection takes (runtime::context::TRY_LOCK_SQL).
    IF EXISTS (SELECT 1 FROM unnest(names) AS n(name)
                WHERE NOT pg_try_advisory_xact_lock(hashtextextended('portcullis.projection/' || n.name, 0))) THEN
        RAISE EXCEPTION 'known round: a projection is locked by its runner' USING ERRCODE = 'lock_not_available';
    END IF;
    -- Taken after the locks: no runner moves these rows until the COMMIT.
    SELECT count(*) INTO found FROM projections.projection_states s
     WHERE s.name = ANY(names) AND (s.position_tx, s.position_seq) = (from_tx, from_seq)
       AND NOT EXISTS (SELECT 1 FROM projections.failed_events f WHERE f.projection = s.name
                         AND (f.event_tx, f.event_seq) > (s.position_tx, s.position_seq));
    IF found <> cardinality(names) THEN
        RAISE EXCEPTION 'known round: % of % projections are where the round expected them, with no failed events ahead',
            found, cardinality(names) USING ERRCODE = 'serialization_failure';
    END IF;
    -- Every transaction that could still add an event up to to_tx has ended ...
    IF to_tx >= eventstore.horizon() THEN
        RAISE EXCEPTION 'known round: a transaction below % is still open', to_tx
            USING ERRCODE = 'serialization_failure';
    END IF;
    -- ... so this statement's snapshot sees all of them, and the count tells whether the
    -- round knows each one: its own events are in the range, and nothing else is.
    SELECT count(*) INTO found FROM eventstore.events e
     WHERE (e.tx, e.seq) > (from_tx, from_seq) AND (e.tx, e.seq) <= (to_tx, to_seq)
       AND (event_types IS NULL OR e.event_type = ANY(event_types));
    IF found <> expected THEN
        RAISE EXCEPTION 'known round: % events in the range, the round knows %', found, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
    -- What the first trip sets too (runtime::live::trip::lock_states).
    PERFORM set_config('search_path', 'projections, public', true);
    RETURN projections.quiet_progress(own_hub);
END
$$;
COMMENT ON FUNCTION projections.known_round(text[], bigint, bigint, bigint, bigint, text[], bigint, uuid) IS
    'For a live round that applies events it knows without reading them: takes every projection''s lock, and raises unless each is at (from_tx, from_seq) with no failed events ahead, every transaction up to to_tx has ended, and exactly expected events of event_types (NULL: all) lie in (from, to]. Then sets what a live round''s transaction needs (search_path, quiet progress) and returns whether its progress stays quiet (projections.quiet_progress).';

-- The progress NOTIFY also says how many events the projection has applied: a position that
-- moves to the horizon without applying anything (a commit wrote none of its types) changes
-- nothing a cache of the read model keeps, and a waiter can tell the two apart.
--
-- After a reset a read model is empty and fills up again from the start of the log. Until it
-- has reached what the log held at the reset, it is incomplete: the service answers reads of
-- it with 503, never with a partial answer.

ALTER TABLE projections.projection_states
    ADD COLUMN complete_at_tx  bigint,
    ADD COLUMN complete_at_seq bigint;
COMMENT ON COLUMN projections.projection_states.complete_at_tx IS 'Set by a reset to the last event of the log at that moment (tx part): the read model is incomplete until the position reaches it; null when complete.';
COMMENT ON COLUMN projections.projection_states.complete_at_seq IS 'The seq part of complete_at_tx''s position.';

CREATE FUNCTION projections.clear_complete_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.complete_at_tx IS NOT NULL
       AND (NEW.position_tx, NEW.position_seq) >= (NEW.complete_at_tx, NEW.complete_at_seq) THEN
        NEW.complete_at_tx := NULL;
        NEW.complete_at_seq := NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION projections.clear_complete_at() IS 'Marks a read model complete again once its position reaches the log''s end at its reset.';

CREATE TRIGGER projection_states_complete
    BEFORE UPDATE OF position_tx, position_seq ON projections.projection_states
    FOR EACH ROW EXECUTE FUNCTION projections.clear_complete_at();
COMMENT ON TRIGGER projection_states_complete ON projections.projection_states IS 'Clears complete_at once the position reaches it.';

CREATE OR REPLACE FUNCTION projections.notify_progress() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('projection_progress', OLD.name || '/0/0/0/1');
        RETURN OLD;
    END IF;
    PERFORM pg_notify('projection_progress',
        NEW.name || '/' || NEW.position_tx || '/' || NEW.position_seq || '/' || NEW.events_applied
        || '/' || CASE WHEN NEW.complete_at_tx IS NULL THEN '0' ELSE '1' END);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION projections.notify_progress() IS 'NOTIFY projection_progress with name/tx/seq/events_applied/incomplete (1 while a reset model has not caught up) when a projection''s position changes.';

CREATE OR REPLACE FUNCTION projections.reset(projection text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    last_tx bigint;
    last_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('portcullis.projection/' || projection, 0));
    IF NOT EXISTS (SELECT 1 FROM projections.projection_states WHERE name = projection) THEN
        RAISE EXCEPTION 'no projection named %', quote_literal(projection) USING ERRCODE = 'PC404';
    END IF;
    FOR t IN SELECT unnest(read_model_tables) FROM projections.projection_states WHERE name = projection LOOP
        EXECUTE format('DELETE FROM %s', t::regclass);
    END LOOP;
    DELETE FROM projections.failed_events WHERE failed_events.projection = reset.projection;
    SELECT e.tx, e.seq INTO last_tx, last_seq
      FROM eventstore.events e ORDER BY e.tx DESC, e.seq DESC LIMIT 1;
    UPDATE projections.projection_states
       SET position_tx = 0, position_seq = 0, event_timestamp = NULL, updated_at = now(),
           last_aggregate_type = NULL, last_aggregate_id = NULL, last_version = NULL,
           events_applied = 0, complete_at_tx = last_tx, complete_at_seq = last_seq
     WHERE name = projection;
    -- Wake every projector now rather than at its next tick.
    PERFORM pg_notify('eventstore_events', '0/0');
END
$$;
COMMENT ON FUNCTION projections.reset(text) IS 'Empties the projection''s read model tables, forgets its failed events and rewinds it to the start; the running service replays it, and reads of it answer 503 until it has caught up with the log as it was.';

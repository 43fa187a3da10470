-- Projections: read models that follow the event store. Their bookkeeping (how far each has
-- read, which events failed) lives here, next to the read models, so a DBA can see it all.
-- See DESIGN.md §4-5.

CREATE SCHEMA projections;
COMMENT ON SCHEMA projections IS 'Portcullis read models and the state of the projections that keep them.';

CREATE TABLE projections.projection_states (
    name                text        PRIMARY KEY,
    position_tx         bigint      NOT NULL DEFAULT 0,
    position_seq        bigint      NOT NULL DEFAULT 0,
    event_types         text[],
    read_model_tables   text[]      NOT NULL DEFAULT '{}',
    event_timestamp     timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    last_aggregate_type text,
    last_aggregate_id   uuid,
    last_version        bigint,
    events_applied      bigint      NOT NULL DEFAULT 0
);
COMMENT ON TABLE projections.projection_states IS 'One row per projection: how far it has read the event store. Moves in the same transaction as its read model.';
COMMENT ON COLUMN projections.projection_states.name IS 'The projection''s name.';
COMMENT ON COLUMN projections.projection_states.position_tx IS 'Position read up to, tx part: every event at or before (position_tx, position_seq) of the projection''s types is applied (or dead-lettered).';
COMMENT ON COLUMN projections.projection_states.position_seq IS 'Position read up to, seq part; 0 after moving up to the horizon.';
COMMENT ON COLUMN projections.projection_states.event_types IS 'Event types the projection consumes, registered by the runner at start; null: every type.';
COMMENT ON COLUMN projections.projection_states.read_model_tables IS 'Tables the projection owns; projections.reset() empties them.';
COMMENT ON COLUMN projections.projection_states.event_timestamp IS 'created_at of the last event applied.';
COMMENT ON COLUMN projections.projection_states.updated_at IS 'When the position last moved.';
COMMENT ON COLUMN projections.projection_states.last_aggregate_type IS 'Aggregate type of the last event applied.';
COMMENT ON COLUMN projections.projection_states.last_aggregate_id IS 'Aggregate id of the last event applied.';
COMMENT ON COLUMN projections.projection_states.last_version IS 'Aggregate version of the last event applied.';
COMMENT ON COLUMN projections.projection_states.events_applied IS 'Events applied since the last reset.';

-- One NOTIFY per batch: the runner updates the row once per batch transaction.
CREATE FUNCTION projections.notify_progress() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('projection_progress', OLD.name || '/0/0');
        RETURN OLD;
    END IF;
    PERFORM pg_notify('projection_progress', NEW.name || '/' || NEW.position_tx || '/' || NEW.position_seq);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION projections.notify_progress() IS 'NOTIFY projection_progress with name/tx/seq when a projection''s position changes.';

CREATE TRIGGER projection_states_progress
    AFTER INSERT OR UPDATE OF position_tx, position_seq OR DELETE ON projections.projection_states
    FOR EACH ROW EXECUTE FUNCTION projections.notify_progress();
COMMENT ON TRIGGER projection_states_progress ON projections.projection_states IS 'Wakes waiters (ProgressHub) in every process when a position moves.';

CREATE TABLE projections.failed_events (
    projection        text        NOT NULL,
    event_tx          bigint      NOT NULL,
    event_seq         bigint      NOT NULL,
    aggregate_type    text        NOT NULL,
    aggregate_id      uuid        NOT NULL,
    aggregate_version bigint      NOT NULL,
    event_type        text        NOT NULL,
    error             text        NOT NULL,
    failure_count     integer     NOT NULL DEFAULT 1,
    first_failed_at   timestamptz NOT NULL,
    last_failed_at    timestamptz NOT NULL,
    next_attempt_at   timestamptz,
    dead_lettered_at  timestamptz,
    acknowledged_at   timestamptz,
    PRIMARY KEY (projection, event_tx, event_seq)
);
COMMENT ON TABLE projections.failed_events IS 'Events a projection could not apply: retried with backoff, then dead-lettered (skipped) after the configured number of failures.';
COMMENT ON COLUMN projections.failed_events.projection IS 'The projection that failed.';
COMMENT ON COLUMN projections.failed_events.event_tx IS 'Position of the event, tx part.';
COMMENT ON COLUMN projections.failed_events.event_seq IS 'Position of the event, seq part.';
COMMENT ON COLUMN projections.failed_events.aggregate_type IS 'Aggregate type of the event.';
COMMENT ON COLUMN projections.failed_events.aggregate_id IS 'Aggregate id of the event.';
COMMENT ON COLUMN projections.failed_events.aggregate_version IS 'Aggregate version of the event.';
COMMENT ON COLUMN projections.failed_events.event_type IS 'Type of the event.';
COMMENT ON COLUMN projections.failed_events.error IS 'The last error the reducer returned.';
COMMENT ON COLUMN projections.failed_events.failure_count IS 'How many times applying it failed.';
COMMENT ON COLUMN projections.failed_events.first_failed_at IS 'First failure.';
COMMENT ON COLUMN projections.failed_events.last_failed_at IS 'Latest failure.';
COMMENT ON COLUMN projections.failed_events.next_attempt_at IS 'Earliest next retry (backoff); null once dead-lettered.';
COMMENT ON COLUMN projections.failed_events.dead_lettered_at IS 'When it was given up on and skipped; the projection is degraded while such rows are unacknowledged.';
COMMENT ON COLUMN projections.failed_events.acknowledged_at IS 'When an operator acknowledged the dead letter (it no longer degrades the projection).';

CREATE TABLE projections.settings (
    only_row      boolean          PRIMARY KEY DEFAULT true CHECK (only_row),
    lag_events    bigint           NOT NULL DEFAULT 1000 CHECK (lag_events >= 0),
    lag_seconds   double precision NOT NULL DEFAULT 30 CHECK (lag_seconds >= 0),
    stall_seconds double precision NOT NULL DEFAULT 60 CHECK (stall_seconds >= 0)
);
INSERT INTO projections.settings DEFAULT VALUES;
COMMENT ON TABLE projections.settings IS 'Alert thresholds behind the status column of projections.health (written by the service from its configuration).';
COMMENT ON COLUMN projections.settings.only_row IS 'Always true; keeps the table at one row.';
COMMENT ON COLUMN projections.settings.lag_events IS 'More events behind than this: lagging.';
COMMENT ON COLUMN projections.settings.lag_seconds IS 'Oldest unapplied event older than this (seconds): lagging.';
COMMENT ON COLUMN projections.settings.stall_seconds IS 'Events waiting and no progress for this long (seconds): stalled.';

-- Empties a projection's read model and rewinds it; its runner replays from the start.
-- The projection's advisory lock makes it wait for a batch in flight.
CREATE FUNCTION projections.reset(projection text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('portcullis.projection/' || projection, 0));
    IF NOT EXISTS (SELECT 1 FROM projections.projection_states WHERE name = projection) THEN
        RAISE EXCEPTION 'no projection named %', quote_literal(projection) USING ERRCODE = 'PC404';
    END IF;
    FOR t IN SELECT unnest(read_model_tables) FROM projections.projection_states WHERE name = projection LOOP
        EXECUTE format('DELETE FROM %s', t::regclass);
    END LOOP;
    DELETE FROM projections.failed_events WHERE failed_events.projection = reset.projection;
    UPDATE projections.projection_states
       SET position_tx = 0, position_seq = 0, event_timestamp = NULL, updated_at = now(),
           last_aggregate_type = NULL, last_aggregate_id = NULL, last_version = NULL,
           events_applied = 0
     WHERE name = projection;
    -- Wake every projector now rather than at its next tick.
    PERFORM pg_notify('eventstore_events', '0/0');
END
$$;
COMMENT ON FUNCTION projections.reset(text) IS 'Empties the projection''s read model tables, forgets its failed events and rewinds it to the start; the running service replays it.';

CREATE VIEW projections.health AS
SELECT s.name,
       s.position_tx || '/' || s.position_seq AS position,
       b.events_behind,
       coalesce(extract(epoch FROM now() - b.oldest_pending), 0)::double precision AS seconds_behind,
       f.failed,
       f.dead_lettered,
       s.updated_at,
       CASE
           WHEN f.failed > 0 OR f.dead_lettered > 0 THEN 'degraded'
           WHEN b.events_behind > 0
                AND now() - s.updated_at > make_interval(secs => cfg.stall_seconds)
                AND now() - b.oldest_pending > make_interval(secs => cfg.stall_seconds) THEN 'stalled'
           WHEN b.events_behind > cfg.lag_events
                OR now() - b.oldest_pending > make_interval(secs => cfg.lag_seconds) THEN 'lagging'
           ELSE 'ok'
       END AS status,
       h.horizon_age_seconds
  FROM projections.projection_states s
 CROSS JOIN projections.settings cfg
 CROSS JOIN LATERAL (
       SELECT count(*) AS events_behind, min(p.created_at) AS oldest_pending
         FROM (SELECT e.created_at FROM eventstore.events e
                WHERE (e.tx, e.seq) > (s.position_tx, s.position_seq)
                  AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
                LIMIT 1000000) p) b
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE fe.dead_lettered_at IS NULL) AS failed,
              count(*) FILTER (WHERE fe.dead_lettered_at IS NOT NULL AND fe.acknowledged_at IS NULL) AS dead_lettered
         FROM projections.failed_events fe WHERE fe.projection = s.name) f
 CROSS JOIN (
       SELECT coalesce(extract(epoch FROM now() - min(a.xact_start)), 0)::double precision AS horizon_age_seconds
         FROM pg_stat_activity a
        WHERE a.backend_xid IS NOT NULL) h;
COMMENT ON VIEW projections.health IS 'Per projection: position, events and seconds behind, failed and dead-lettered counts, last update, status (ok, lagging, degraded, stalled), and the age of the oldest transaction holding the event horizon back.';
COMMENT ON COLUMN projections.health.name IS 'The projection''s name.';
COMMENT ON COLUMN projections.health.position IS 'Position read up to, as tx/seq.';
COMMENT ON COLUMN projections.health.events_behind IS 'Events of its types after its position (counted up to a million).';
COMMENT ON COLUMN projections.health.seconds_behind IS 'Age of the oldest event it has not applied yet; 0 when caught up.';
COMMENT ON COLUMN projections.health.failed IS 'Events failing and being retried.';
COMMENT ON COLUMN projections.health.dead_lettered IS 'Events given up on and not acknowledged.';
COMMENT ON COLUMN projections.health.updated_at IS 'When the position last moved.';
COMMENT ON COLUMN projections.health.status IS 'degraded (failing or dead-lettered events), stalled (events waiting, no progress for stall_seconds), lagging (over lag_events or lag_seconds), else ok.';
COMMENT ON COLUMN projections.health.horizon_age_seconds IS 'Age of the oldest open transaction holding a transaction id anywhere in the cluster: readers cannot pass it.';

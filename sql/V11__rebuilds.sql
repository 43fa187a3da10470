-- Blue/green rebuilds: a new copy of a projection's read model is built beside the live one
-- (schema projections_rebuild, the same tables, indexes and keys), from the start of the log
-- at full speed, then swapped in atomically once it has caught up. Reads and writes use the
-- live copy until the swap, and never see a partial model.

CREATE SCHEMA projections_rebuild;
COMMENT ON SCHEMA projections_rebuild IS 'Read models being rebuilt (projections.rebuilds): copies of tables of the projections schema, swapped in when complete.';

CREATE TABLE projections.rebuilds (
    projection     text        PRIMARY KEY REFERENCES projections.projection_states (name) ON DELETE CASCADE,
    position_tx    bigint      NOT NULL DEFAULT 0,
    position_seq   bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deferred_indexes text[]    NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE projections.rebuilds IS 'Rebuilds in progress: the copy in projections_rebuild and how far it has read; survives restarts (the builder resumes), deleted by the swap.';
COMMENT ON COLUMN projections.rebuilds.projection IS 'The projection being rebuilt.';
COMMENT ON COLUMN projections.rebuilds.position_tx IS 'How far the copy has read, tx part.';
COMMENT ON COLUMN projections.rebuilds.position_seq IS 'How far the copy has read, seq part.';
COMMENT ON COLUMN projections.rebuilds.events_applied IS 'Events applied to the copy so far.';
COMMENT ON COLUMN projections.rebuilds.requested_at IS 'When the rebuild was asked for.';
COMMENT ON COLUMN projections.rebuilds.updated_at IS 'When the copy last moved.';
COMMENT ON COLUMN projections.rebuilds.deferred_indexes IS 'CREATE INDEX statements for the copy''s secondary indexes, left out while it fills; run (and emptied) once it has caught up.';

-- Asks for a rebuild: creates the copy's empty tables and wakes the services. A copy fills
-- fastest without its secondary indexes (each row would update every one of them): they are
-- left out and built in bulk, under their own names, once it has caught up, before the swap.
-- Keys and unique indexes stay; the projections rely on them.

CREATE FUNCTION projections.request_rebuild(projection text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t        regclass;
    rel      name;
    fk       record;
    idx      record;
    deferred text[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('portcullis.rebuild/' || projection, 0));
    IF NOT EXISTS (SELECT 1 FROM projections.projection_states WHERE name = projection) THEN
        RAISE EXCEPTION 'no projection named %', quote_literal(projection) USING ERRCODE = 'PC404';
    END IF;
    IF EXISTS (SELECT 1 FROM projections.rebuilds r WHERE r.projection = request_rebuild.projection) THEN
        RETURN; -- already under way
    END IF;
    FOR t IN SELECT unnest(read_model_tables)::regclass FROM projections.projection_states WHERE name = projection LOOP
        SELECT relname INTO rel FROM pg_class WHERE oid = t;
        EXECUTE format('DROP TABLE IF EXISTS projections_rebuild.%I CASCADE', rel);
        EXECUTE format('CREATE TABLE projections_rebuild.%I (LIKE %s INCLUDING ALL EXCLUDING INDEXES)', rel, t);
        FOR idx IN SELECT x.indisunique, pg_get_indexdef(i.oid) AS def, con.conname, con.oid AS conoid
                     FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                     LEFT JOIN pg_constraint con ON con.conindid = i.oid AND con.conrelid = t
                    WHERE x.indrelid = t LOOP
            IF idx.conname IS NOT NULL THEN
                -- A key or unique constraint: part of the table, built now.
                EXECUTE format('ALTER TABLE projections_rebuild.%I ADD CONSTRAINT %I %s', rel, idx.conname,
                               pg_get_constraintdef(idx.conoid));
            ELSIF idx.indisunique THEN
                EXECUTE replace(idx.def, ' ON projections.', ' ON projections_rebuild.');
            ELSE
                deferred := deferred || replace(idx.def, ' ON projections.', ' ON projections_rebuild.');
            END IF;
        END LOOP;
    END LOOP;
    FOR fk IN
        SELECT c.conname, src.relname AS src, pg_get_constraintdef(c.oid) AS def
          FROM pg_constraint c JOIN pg_class src ON src.oid = c.conrelid
         WHERE c.contype = 'f'
           AND c.conrelid IN (SELECT unnest(read_model_tables)::regclass FROM projections.projection_states WHERE name = projection)
    LOOP
        EXECUTE format('ALTER TABLE projections_rebuild.%I ADD CONSTRAINT %I %s', fk.src, fk.conname,
                       replace(fk.def, 'REFERENCES projections.', 'REFERENCES projections_rebuild.'));
    END LOOP;
    INSERT INTO projections.rebuilds (projection, deferred_indexes) VALUES (projection, deferred);
    PERFORM pg_notify('projection_rebuild', projection);
END
$$;
COMMENT ON FUNCTION projections.request_rebuild(text) IS 'Starts a blue/green rebuild of the projection: an empty copy of its tables in projections_rebuild (keys and unique indexes now, secondary indexes once it has caught up) that the running service fills from the start of the log and swaps in when caught up. Does nothing while one is under way.';

-- The swap: called by the builder holding the projection's lock, once the copy has read at
-- least as far as the live model. Replaces the live tables by the copy in one transaction
-- (readers wait for its locks, then see the new tables) and moves the projection's state.
CREATE FUNCTION projections.swap_rebuild(projection text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r       projections.rebuilds;
    t       regclass;
    rel     name;
    cmt     text;
    idx     record;
    names   jsonb := '{}';
BEGIN
    SELECT * INTO r FROM projections.rebuilds WHERE rebuilds.projection = swap_rebuild.projection FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rebuild of % under way', quote_literal(projection) USING ERRCODE = 'PC404';
    END IF;
    FOR t IN SELECT unnest(read_model_tables)::regclass FROM projections.projection_states WHERE name = projection LOOP
        SELECT relname INTO rel FROM pg_class WHERE oid = t;
        cmt := obj_description(t, 'pg_class');
        -- Index names by definition (the copy's were generated): the swapped-in table keeps
        -- the names the migrations gave.
        FOR idx IN SELECT i.relname, regexp_replace(pg_get_indexdef(i.oid), '^.* USING ', '') AS def
                     FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = t LOOP
            names := names || jsonb_build_object(rel || ' ' || idx.def, idx.relname);
        END LOOP;
        EXECUTE format('DROP TABLE %s CASCADE', t);
        EXECUTE format('ALTER TABLE projections_rebuild.%I SET SCHEMA projections', rel);
        EXECUTE format('COMMENT ON TABLE projections.%I IS %L', rel, cmt);
    END LOOP;
    FOR idx IN SELECT i.relname, c.relname AS tab, regexp_replace(pg_get_indexdef(i.oid), '^.* USING ', '') AS def
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
                WHERE c.relnamespace = 'projections'::regnamespace
                  AND c.oid IN (SELECT unnest(read_model_tables)::regclass FROM projections.projection_states WHERE name = projection) LOOP
        IF names ? (idx.tab || ' ' || idx.def) AND names ->> (idx.tab || ' ' || idx.def) <> idx.relname THEN
            EXECUTE format('ALTER INDEX projections.%I RENAME TO %I', idx.relname, names ->> (idx.tab || ' ' || idx.def));
        END IF;
    END LOOP;
    UPDATE projections.projection_states
       SET position_tx = r.position_tx, position_seq = r.position_seq, updated_at = now(),
           events_applied = r.events_applied, complete_at_tx = NULL, complete_at_seq = NULL
     WHERE name = projection;
    DELETE FROM projections.rebuilds WHERE rebuilds.projection = swap_rebuild.projection;
END
$$;
COMMENT ON FUNCTION projections.swap_rebuild(text) IS 'Swaps a caught-up rebuild in: replaces the live tables by their copies (keeping names, comments and index names) and moves the projection to the copy''s position, in one transaction. Called by the service''s builder.';

-- Health shows a rebuild under way: how far the copy is behind the log and when it will be done.
CREATE OR REPLACE VIEW projections.health AS
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
           WHEN b.events_behind > coalesce(th.lag_events, cfg.lag_events)
                OR now() - b.oldest_pending > make_interval(secs => coalesce(th.lag_seconds, cfg.lag_seconds)) THEN 'lagging'
           ELSE 'ok'
       END AS status,
       h.horizon_age_seconds,
       coalesce(th.lag_events, cfg.lag_events) AS lag_events,
       coalesce(th.lag_seconds, cfg.lag_seconds) AS lag_seconds,
       rb.projection IS NOT NULL AS rebuilding,
       rbb.events_behind AS rebuild_events_behind,
       CASE WHEN rb.events_applied > 0
            THEN rbb.events_behind * extract(epoch FROM now() - rb.requested_at) / rb.events_applied
       END::double precision AS rebuild_eta_seconds
  FROM projections.projection_states s
 CROSS JOIN projections.settings cfg
  LEFT JOIN projections.thresholds th ON th.projection = s.name
  LEFT JOIN projections.rebuilds rb ON rb.projection = s.name
 CROSS JOIN LATERAL (
       SELECT count(*) AS events_behind, min(p.created_at) AS oldest_pending
         FROM (SELECT e.created_at FROM eventstore.events e
                WHERE (e.tx, e.seq) > (s.position_tx, s.position_seq)
                  AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
                LIMIT 1000000) p) b
 CROSS JOIN LATERAL (
       SELECT count(*) AS events_behind
         FROM (SELECT 1 FROM eventstore.events e
                WHERE rb.projection IS NOT NULL
                  AND (e.tx, e.seq) > (rb.position_tx, rb.position_seq)
                  AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
                LIMIT 10000000) p) rbb
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE fe.dead_lettered_at IS NULL) AS failed,
              count(*) FILTER (WHERE fe.dead_lettered_at IS NOT NULL AND fe.acknowledged_at IS NULL) AS dead_lettered
         FROM projections.failed_events fe WHERE fe.projection = s.name) f
 CROSS JOIN (
       SELECT coalesce(extract(epoch FROM now() - min(a.xact_start)), 0)::double precision AS horizon_age_seconds
         FROM pg_stat_activity a
        WHERE a.backend_xid IS NOT NULL) h;
COMMENT ON COLUMN projections.health.rebuilding IS 'A blue/green rebuild is under way (projections.rebuilds).';
COMMENT ON COLUMN projections.health.rebuild_events_behind IS 'Events of its types the copy being rebuilt has still to read; 0 when not rebuilding.';
COMMENT ON COLUMN projections.health.rebuild_eta_seconds IS 'Seconds until the copy has caught up, at its pace so far; null when not rebuilding or not started.';

-- Builds the copy's deferred indexes (the builder calls it once the copy has caught up).
CREATE FUNCTION projections.build_rebuild_indexes(projection text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    stmt text;
    n    integer := 0;
BEGIN
    FOR stmt IN SELECT unnest(deferred_indexes) FROM projections.rebuilds r WHERE r.projection = build_rebuild_indexes.projection LOOP
        EXECUTE stmt;
        n := n + 1;
    END LOOP;
    UPDATE projections.rebuilds r SET deferred_indexes = '{}' WHERE r.projection = build_rebuild_indexes.projection;
    RETURN n;
END
$$;
COMMENT ON FUNCTION projections.build_rebuild_indexes(text) IS 'Creates the secondary indexes a rebuild''s copy was filled without; returns how many.';

-- A rebuild fills its copy fastest without the secondary indexes (each row would update every
-- one of them): the copy is created without them, and they are built in bulk, under their
-- own names, once the copy has caught up, before the swap. Unique indexes and keys stay, the
-- projections rely on them.

ALTER TABLE projections.rebuilds ADD COLUMN deferred_indexes text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN projections.rebuilds.deferred_indexes IS 'CREATE INDEX statements for the copy''s secondary indexes, left out while it fills; run (and emptied) once it has caught up.';

CREATE OR REPLACE FUNCTION projections.request_rebuild(projection text) RETURNS void
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

-- Restore safety: positions of the log are kept outside it too (projection states, failed
-- events). After a logical restore into a new cluster, new events must sort after every one
-- of them, not only after the restored events, or a projection already past them would never
-- apply them. The event store does not know its readers; they register here.

CREATE TABLE eventstore.position_holders (
    table_name  regclass NOT NULL,
    column_name name     NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
COMMENT ON TABLE eventstore.position_holders IS 'Columns outside the log that hold the tx part of its positions; eventstore.rebase_after_restore() raises the offset past the highest of them.';
COMMENT ON COLUMN eventstore.position_holders.table_name IS 'A table that keeps positions of the log.';
COMMENT ON COLUMN eventstore.position_holders.column_name IS 'Its column with the tx part of a position.';

INSERT INTO eventstore.position_holders VALUES
    ('projections.projection_states', 'position_tx'),
    ('projections.failed_events', 'event_tx');

-- The lowest tx a new event may take: past every event (an event at (t, s) needs tx > t), and
-- not below any position kept elsewhere (a projection at (t, 0) has read everything with tx < t).
CREATE FUNCTION eventstore.lowest_safe_tx() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    h      record;
    m      bigint;
    result bigint;
BEGIN
    SELECT coalesce(max(tx), 0) + 1 INTO result FROM eventstore.events;
    FOR h IN SELECT table_name, column_name FROM eventstore.position_holders LOOP
        EXECUTE format('SELECT max(%I) FROM %s', h.column_name, h.table_name) INTO m;
        result := greatest(result, coalesce(m, 0));
    END LOOP;
    RETURN result;
END
$$;
COMMENT ON FUNCTION eventstore.lowest_safe_tx() IS 'The lowest tx a new event may take: above every event''s and at least every position in eventstore.position_holders.';

-- How far stored positions are ahead of the transaction ids this cluster hands out next:
-- above 0 after a restore into a new cluster, until the rebase.
CREATE FUNCTION eventstore.positions_ahead() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, eventstore.lowest_safe_tx()
        - (pg_snapshot_xmax(pg_current_snapshot())::text::bigint
           + (SELECT xid_offset FROM eventstore.xid_offset)))
$$;
COMMENT ON FUNCTION eventstore.positions_ahead() IS 'By how many transaction ids stored positions are ahead of the next one this cluster assigns; the service refuses to start while it is above 0 (run eventstore.rebase_after_restore()).';

CREATE OR REPLACE FUNCTION eventstore.rebase_after_restore() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    old_offset bigint;
    new_offset bigint;
BEGIN
    LOCK TABLE eventstore.events IN SHARE ROW EXCLUSIVE MODE;
    SELECT xid_offset INTO old_offset FROM eventstore.xid_offset FOR UPDATE;
    -- Every later transaction has a higher xid than this one.
    new_offset := greatest(old_offset, eventstore.lowest_safe_tx() - pg_current_xact_id()::text::bigint);
    UPDATE eventstore.xid_offset
       SET xid_offset = new_offset,
           rebased_at = CASE WHEN new_offset <> old_offset THEN now() ELSE rebased_at END;
    RETURN new_offset;
END
$$;
COMMENT ON FUNCTION eventstore.rebase_after_restore() IS 'After restoring a dump into a new cluster: raise xid_offset so new positions sort after every stored one (events, projection positions, failed events). Idempotent; returns the offset.';

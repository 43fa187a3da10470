-- eventstore.horizon() in plpgsql, as eventstore.current_tx() is: a sql function with a
-- sub-select is never inlined, so every statement that called it parsed and planned the
-- body again (about 0.1 ms, more than the read it bounds). plpgsql keeps that plan for the
-- session. Still STABLE: its query runs in the snapshot of the statement that calls it, so a
-- reader that filters on tx < horizon() in one statement still cannot miss a later commit.

CREATE OR REPLACE FUNCTION eventstore.horizon() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         + (SELECT xid_offset FROM eventstore.xid_offset);
END
$$;
COMMENT ON FUNCTION eventstore.horizon() IS 'Every transaction that can still commit has tx >= horizon(); readers read only events below it.';

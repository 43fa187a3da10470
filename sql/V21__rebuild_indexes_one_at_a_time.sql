-- A rebuild's deferred indexes, one per call, so that the builder can build several at once
-- on separate connections (a bulk build is one core's work; the copy of users has five
-- secondary indexes, the trigram one the largest). A call that finds its index already
-- built (by another process, which took the same lock first) does nothing.

CREATE FUNCTION projections.build_rebuild_index(projection text, stmt text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('portcullis.rebuild-index/' || stmt, 0));
    IF NOT EXISTS (SELECT 1 FROM projections.rebuilds r
                    WHERE r.projection = build_rebuild_index.projection
                      AND stmt = ANY (r.deferred_indexes)) THEN
        RETURN false;
    END IF;
    EXECUTE stmt;
    UPDATE projections.rebuilds r SET deferred_indexes = array_remove(r.deferred_indexes, stmt)
     WHERE r.projection = build_rebuild_index.projection;
    RETURN true;
END
$$;
COMMENT ON FUNCTION projections.build_rebuild_index(text, text) IS 'Creates one of the secondary indexes a rebuild''s copy was filled without (a statement from projections.rebuilds.deferred_indexes) and takes it off the list; false when it is no longer on it.';

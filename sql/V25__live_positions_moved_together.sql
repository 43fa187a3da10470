-- The live round may send its COMMIT right behind its writes and its positions' UPDATE, in
-- the same round trip (runtime::live, "one go"). It then cannot look at how many positions the
-- UPDATE moved before it commits, so the check is the server's: when a state moved under the
-- round (it was read just before the round's lock was taken), the UPDATE fails, the
-- transaction is aborted, and its COMMIT rolls everything back.
CREATE FUNCTION projections.expect_moved(moved bigint, expected bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF moved <> expected THEN
        RAISE EXCEPTION 'the live round moved % of % projection positions: a state moved under it',
            moved, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN moved;
END
$$;
COMMENT ON FUNCTION projections.expect_moved(bigint, bigint) IS 'Raises serialization_failure (40001) unless a live round moved every position it planned to; returns how many it moved.';

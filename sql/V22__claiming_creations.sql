-- Creations that claim unique values (a new user claims its userName) are the most common
-- write. The service appends them with one plain statement instead of eventstore.append:
-- the claims are inserted ON CONFLICT DO NOTHING, and the events only when every claim went
-- in; otherwise this function raises PC002 (as eventstore.append does), which rolls the whole
-- statement back, claims included. Measured with pgbench at 16 clients: about a quarter more
-- creations per second than through the plpgsql append.

CREATE FUNCTION eventstore.claims_taken(names text[], vals text[], held_names text[], held_vals text[])
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    i int;
    j int;
    held boolean;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(names), 0) LOOP
        held := false;
        FOR j IN 1 .. coalesce(cardinality(held_names), 0) LOOP
            IF held_names[j] = names[i] AND held_vals[j] = vals[i] THEN
                held := true;
                EXIT;
            END IF;
        END LOOP;
        IF NOT held THEN
            RAISE EXCEPTION 'unique constraint %: value % is taken', names[i], quote_literal(vals[i])
                USING ERRCODE = 'PC002',
                      DETAIL = jsonb_build_object('constraint', names[i], 'value', vals[i])::text;
        END IF;
    END LOOP;
    -- A value claimed twice in one push: the second claim found the first.
    RAISE EXCEPTION 'a unique value is claimed twice in one push' USING ERRCODE = 'PC003';
END
$$;
COMMENT ON FUNCTION eventstore.claims_taken(text[], text[], text[], text[]) IS 'Raises PC002 for the first claimed value (names[i], vals[i]) that is not among those a creating statement managed to insert (held_names, held_vals); called only when some claim found its value taken.';

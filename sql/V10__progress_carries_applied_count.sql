-- The progress NOTIFY also says how many events the projection has applied: a position that
-- moves to the horizon without applying anything (a commit wrote none of its types) changes
-- nothing a cache of the read model keeps, and a waiter can tell the two apart.
CREATE OR REPLACE FUNCTION projections.notify_progress() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('projection_progress', OLD.name || '/0/0/0');
        RETURN OLD;
    END IF;
    PERFORM pg_notify('projection_progress',
        NEW.name || '/' || NEW.position_tx || '/' || NEW.position_seq || '/' || NEW.events_applied);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION projections.notify_progress() IS 'NOTIFY projection_progress with name/tx/seq/events_applied when a projection''s position changes.';

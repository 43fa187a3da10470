-- A NOTIFY costs every commit that sends one (the notification queue's lock, the signal to
-- each listening backend, the listeners' wake-ups), and the live round commits hundreds of
-- times a second under load. Its progress NOTIFY is for the progress hubs of *other*
-- processes: its own process hears of the round directly. So each hub registers here once
-- it LISTENs, and a live round stays quiet while no other process's hub is registered.
--
-- The race with a hub that starts while rounds are under way is closed by a lock: a round
-- takes it shared before it looks here and keeps it to its COMMIT; a hub that has registered
-- takes it exclusively (waiting out every round that looked before it was here) before it
-- loads the positions. A round that looked before sees its commit in that load; a round that
-- looks after sees the hub and announces.

CREATE TABLE projections.progress_hubs (
    hub           uuid PRIMARY KEY,
    pid           integer NOT NULL,
    backend_start timestamptz NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE projections.progress_hubs IS 'The progress hubs (one per service process) listening on projection_progress, by the backend of their LISTEN connection; a row whose backend is gone is stale and ignored.';
COMMENT ON COLUMN projections.progress_hubs.hub IS 'The hub''s id, new for every process.';
COMMENT ON COLUMN projections.progress_hubs.pid IS 'Backend pid of the hub''s LISTEN connection.';
COMMENT ON COLUMN projections.progress_hubs.backend_start IS 'When that backend started: with pid, names the connection (a pid is reused).';
COMMENT ON COLUMN projections.progress_hubs.registered_at IS 'When the hub last (re)connected.';

CREATE FUNCTION projections.register_progress_hub(hub_id uuid) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM projections.progress_hubs h
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(h.pid) a
                        WHERE a.backend_start IS NULL OR a.backend_start = h.backend_start);
    INSERT INTO projections.progress_hubs AS h (hub, pid, backend_start)
    SELECT hub_id, pg_backend_pid(), a.backend_start
      FROM pg_stat_get_activity(pg_backend_pid()) a
    ON CONFLICT ON CONSTRAINT progress_hubs_pkey DO UPDATE
       SET pid = EXCLUDED.pid, backend_start = EXCLUDED.backend_start, registered_at = now();
END
$$;
COMMENT ON FUNCTION projections.register_progress_hub(uuid) IS 'Registers the calling connection as the LISTEN connection of progress hub hub_id (and forgets hubs whose connection is gone). Call it after LISTEN, commit, then take projections.progress_hubs_settled() before loading positions.';

CREATE FUNCTION projections.progress_hubs_settled() RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('portcullis.progress_hubs', 0));
$$;
COMMENT ON FUNCTION projections.progress_hubs_settled() IS 'Waits until every live round that looked for progress hubs before the caller registered has ended (the lock, taken exclusively and released at the end of the caller''s transaction).';

CREATE FUNCTION projections.quiet_progress(own_hub uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('portcullis.progress_hubs', 0));
    -- A new snapshot for this statement (read committed): every hub registered before the
    -- lock was ours is seen. A backend whose start this role may not see counts as alive.
    IF EXISTS (SELECT 1 FROM projections.progress_hubs h
                WHERE h.hub <> own_hub
                  AND EXISTS (SELECT 1 FROM pg_stat_get_activity(h.pid) a
                               WHERE a.backend_start IS NULL OR a.backend_start = h.backend_start)) THEN
        RETURN false;
    END IF;
    PERFORM set_config('portcullis.progress', 'quiet', true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION projections.quiet_progress(uuid) IS 'For a live round of the process whose hub is own_hub: when no other process''s hub listens, its position updates send no progress NOTIFY in this transaction (its own hub hears of them directly). Holds the progress_hubs lock shared to the end of the transaction.';

-- The progress trigger splits in two, so that a quiet round's position updates skip it in
-- its WHEN clause and cost no call of notify_progress(). A model that becomes complete again
-- (it reached the end of the log at its reset) is always announced: the round's own process
-- learns that from the notification too.
DROP TRIGGER projection_states_progress ON projections.projection_states;
CREATE TRIGGER projection_states_progress
    AFTER INSERT OR DELETE ON projections.projection_states
    FOR EACH ROW EXECUTE FUNCTION projections.notify_progress();
COMMENT ON TRIGGER projection_states_progress ON projections.projection_states IS 'Wakes waiters (ProgressHub) in every process when a projection is added or removed.';
CREATE TRIGGER projection_states_progress_moved
    AFTER UPDATE OF position_tx, position_seq ON projections.projection_states
    FOR EACH ROW
    WHEN (OLD.complete_at_tx IS NOT NULL
          OR current_setting('portcullis.progress', true) IS DISTINCT FROM 'quiet')
    EXECUTE FUNCTION projections.notify_progress();
COMMENT ON TRIGGER projection_states_progress_moved ON projections.projection_states IS 'Wakes waiters (ProgressHub) in every process when a position moves; not for a live round that projections.quiet_progress() found unheard, unless it completes a reset model.';

-- Lag thresholds per projection: a projection listed here is judged by its own limits; the
-- others by projections.settings.

CREATE TABLE projections.thresholds (
    projection  text             PRIMARY KEY,
    lag_events  bigint           NOT NULL CHECK (lag_events >= 0),
    lag_seconds double precision NOT NULL CHECK (lag_seconds >= 0)
);
COMMENT ON TABLE projections.thresholds IS 'Per-projection alert thresholds (PORTCULLIS_PROJECTION_LAG), overriding projections.settings for that projection. Written by the service from its configuration.';
COMMENT ON COLUMN projections.thresholds.projection IS 'The projection''s name.';
COMMENT ON COLUMN projections.thresholds.lag_events IS 'More events behind than this: lagging.';
COMMENT ON COLUMN projections.thresholds.lag_seconds IS 'Oldest unapplied event older than this (seconds): lagging.';

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
           WHEN b.events_behind > coalesce(t.lag_events, cfg.lag_events)
                OR now() - b.oldest_pending > make_interval(secs => coalesce(t.lag_seconds, cfg.lag_seconds)) THEN 'lagging'
           ELSE 'ok'
       END AS status,
       h.horizon_age_seconds,
       coalesce(t.lag_events, cfg.lag_events) AS lag_events,
       coalesce(t.lag_seconds, cfg.lag_seconds) AS lag_seconds
  FROM projections.projection_states s
 CROSS JOIN projections.settings cfg
  LEFT JOIN projections.thresholds t ON t.projection = s.name
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
COMMENT ON COLUMN projections.health.status IS 'degraded (failing or dead-lettered events), stalled (events waiting, no progress for stall_seconds), lagging (over its lag_events or lag_seconds), else ok.';
COMMENT ON COLUMN projections.health.lag_events IS 'The events-behind threshold this projection is judged by (projections.thresholds, else projections.settings).';
COMMENT ON COLUMN projections.health.lag_seconds IS 'The seconds-behind threshold this projection is judged by.';

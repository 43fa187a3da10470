//! Prometheus metrics (`GET /metrics`, text format 0.0.4). Counters and histograms live in one
//! process-wide registry, fed where things happen; the per-projection gauges are read from
//! `projections.health` at scrape time, so they agree with the view, the dashboard and
//! `/readyz`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// One projection's gauges at scrape time (read from `projections.health` by the caller, so
/// this module depends on nothing of the service).
pub struct ProjectionGauges<'a> {
    pub name: &'a str,
    pub events_behind: f64,
    pub seconds_behind: f64,
    pub failed: f64,
    pub dead_lettered: f64,
    /// projections.health's status: ok, lagging, stalled or degraded.
    pub status: &'a str,
}

/// The statuses of projections.health, each a series of `portcullis_projection_status`.
pub const PROJECTION_STATUSES: [&str; 4] = ["ok", "lagging", "stalled", "degraded"];

pub struct Metrics {
    registry: Registry,
    pub events_appended: IntCounter,
    pub wait_seconds: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub mail_sent: IntCounter,
    pub mail_failed: IntCounter,
    pub mail_given_up: IntCounter,
    /// SETs made and queued for receivers.
    pub sets_queued: IntCounter,
    /// SETs acknowledged by receivers (pushed with 2xx, or acked in a poll).
    pub sets_delivered: IntCounter,
    /// Pushes that failed (the receiver backs off).
    pub set_push_failures: IntCounter,
    /// From commit to a receiver's acknowledgement of a pushed SET.
    pub set_delay_seconds: prometheus::Histogram,
    /// Live rounds that applied this process's own events without reading the log, by
    /// outcome (applied, or declined: the database had others in between).
    pub known_rounds: IntCounterVec,
    events_behind: GaugeVec,
    seconds_behind: GaugeVec,
    failed: GaugeVec,
    dead_lettered: GaugeVec,
    status: GaugeVec,
    horizon_age: prometheus::Gauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let gauge = |name: &str, help: &str| {
        register(
            &r,
            GaugeVec::new(Opts::new(name, help), &["projection"]).unwrap(),
        )
    };
    // Waits end in microseconds when the hub is warm and in seconds when a projection lags.
    let wait_buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    Metrics {
        events_appended: register(
            &r,
            IntCounter::new(
                "portcullis_events_appended_total",
                "Events this process appended to eventstore.events.",
            )
            .unwrap(),
        ),
        wait_seconds: register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_wait_for_position_seconds",
                    "How long waits for a projection to reach a position took (outcome: reached or timeout).",
                )
                .buckets(wait_buckets),
                &["projection", "outcome"],
            )
            .unwrap(),
        ),
        known_rounds: register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "portcullis_live_rounds_known_total",
                    "Live projection rounds that applied events this process appended without reading them back, by outcome (applied, declined).",
                ),
                &["outcome"],
            )
            .unwrap(),
        ),
        http_requests: register(
            &r,
            IntCounterVec::new(
                Opts::new("portcullis_http_requests_total", "HTTP requests by route and status."),
                &["route", "status"],
            )
            .unwrap(),
        ),
        http_seconds: register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_http_request_duration_seconds",
                    "HTTP request durations by route and status.",
                ),
                &["route", "status"],
            )
            .unwrap(),
        ),
        mail_sent: register(
            &r,
            IntCounter::new("portcullis_mail_sent_total", "Mails handed to the SMTP server (or the log).").unwrap(),
        ),
        mail_failed: register(
            &r,
            IntCounter::new("portcullis_mail_failed_total", "Failed attempts to send a mail.").unwrap(),
        ),
        mail_given_up: register(
            &r,
            IntCounter::new(
                "portcullis_mail_given_up_total",
                "Mails given up after the configured attempts (left in mail.outbox).",
            )
            .unwrap(),
        ),
        sets_queued: register(
            &r,
            IntCounter::new("portcullis_sets_queued_total", "Security Event Tokens made and queued for receivers.").unwrap(),
        ),
        sets_delivered: register(
            &r,
            IntCounter::new(
                "portcullis_sets_delivered_total",
                "SETs receivers acknowledged (a push answered 2xx, or acked in a poll).",
            )
            .unwrap(),
        ),
        set_push_failures: register(
            &r,
            IntCounter::new("portcullis_set_push_failures_total", "Failed SET pushes (the receiver backs off).").unwrap(),
        ),
        set_delay_seconds: register(
            &r,
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "portcullis_set_delivery_delay_seconds",
                    "From a change's commit to the receiver accepting its pushed SET.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0]),
            )
            .unwrap(),
        ),
        events_behind: gauge(
            "portcullis_projection_events_behind",
            "Events the projection has not read yet.",
        ),
        seconds_behind: gauge(
            "portcullis_projection_seconds_behind",
            "Age of the oldest event the projection has not read (0 when caught up).",
        ),
        failed: gauge(
            "portcullis_projection_failed_events",
            "Events that failed and are being retried.",
        ),
        dead_lettered: gauge(
            "portcullis_projection_dead_lettered_events",
            "Events given up on and skipped, not yet acknowledged.",
        ),
        status: register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "portcullis_projection_status",
                    "1 for the projection's status in projections.health, 0 for the others.",
                ),
                &["projection", "status"],
            )
            .unwrap(),
        ),
        horizon_age: register(
            &r,
            prometheus::Gauge::new(
                "portcullis_horizon_age_seconds",
                "Age of the oldest open transaction holding an xid (it holds every reader back).",
            )
            .unwrap(),
        ),
        registry: r,
    }
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// The text exposition, with the projection gauges set from `projections` and the
    /// horizon's age.
    pub fn render(&self, projections: &[ProjectionGauges], horizon_age_seconds: f64) -> String {
        for g in [
            &self.events_behind,
            &self.seconds_behind,
            &self.failed,
            &self.dead_lettered,
            &self.status,
        ] {
            g.reset();
        }
        for p in projections {
            let l = [p.name];
            self.events_behind
                .with_label_values(&l)
                .set(p.events_behind);
            self.seconds_behind
                .with_label_values(&l)
                .set(p.seconds_behind);
            self.failed.with_label_values(&l).set(p.failed);
            self.dead_lettered
                .with_label_values(&l)
                .set(p.dead_lettered);
            for s in PROJECTION_STATUSES {
                let on = if s == p.status { 1.0 } else { 0.0 };
                self.status.with_label_values(&[p.name, s]).set(on);
            }
        }
        self.horizon_age.set(horizon_age_seconds);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("utf-8")
    }
}

//! Lag over the last minutes, sampled from projections.health every few seconds: the
//! dashboard's chart reads it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::HealthReport;

/// Samples kept for the chart: ten minutes at one per five seconds.
const HISTORY: usize = 120;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Lag over the last minutes, sampled from projections.health.
#[derive(Debug, Clone, Default)]
pub struct LagHistory(Arc<Mutex<VecDeque<Sample>>>);

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    at: f64,
    projections: Vec<SampleRow>,
}

#[derive(Debug, Clone, Serialize)]
struct SampleRow {
    name: String,
    events_behind: i64,
    seconds_behind: f64,
}

impl LagHistory {
    pub fn record(&self, h: &HealthReport) {
        let sample = Sample {
            at: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            projections: h
                .projections
                .iter()
                .map(|p| SampleRow {
                    name: p.name.clone(),
                    events_behind: p.events_behind,
                    seconds_behind: p.seconds_behind,
                })
                .collect(),
        };
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(sample);
        while q.len() > HISTORY {
            q.pop_front();
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Samples every few seconds for as long as the app lives (a metrics sampler: nothing
    /// waits on it).
    pub fn start_sampling(&self, pool: deadpool_postgres::Pool) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                if let Ok(client) = pool.get().await {
                    if let Ok(h) = super::health(&client).await {
                        me.record(&h);
                    }
                }
            }
        })
    }
}

//! Portcullis: a PostgreSQL-native, event-sourced identity service. See docs/ARCHITECTURE.md for the
//! picture; each module below is one of its boxes.

pub mod api;
pub mod app;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod eventstore;
pub mod http;
pub mod listener;
pub mod mail;
pub mod metrics;
pub mod read_models;
pub mod runtime;
pub mod scim;
pub mod secevents;
pub mod signing;
pub mod templates;

// A request allocates and frees many small buffers (headers, JSON values, rows) across
// worker threads; mimalloc's per-thread free lists cost less than glibc's arenas there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error and its causes, `: `-separated, for logs, responses and the command line (each
/// message says only its own part: the causes are its sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

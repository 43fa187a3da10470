//! All integration tests, in one binary to keep link time down. Each runs against real
//! PostgreSQL in a database of its own (see `support`).

mod support;

mod admin;
mod audit;
mod cli;
mod cluster;
mod dashboard;
mod eventstore;
mod faults;
mod http;
mod known_rounds;
mod ops;
mod progress;
mod projections;
mod read_models;
mod rebuild;
mod restore;
mod scim;
mod secevents;
mod sessions;
mod tls;
mod tokens;
mod verification;

//! Portcullis: a PostgreSQL-native, event-sourced identity service. See DESIGN.md for the
//! picture; each module below is one of its boxes.

pub mod api;
pub mod app;
pub mod config;
pub mod db;
pub mod eventstore;

//! caldera follows the `_changes` feeds of a Kazoo-style platform's CouchDB
//! databases, precomputes what devices and SIP servers need into cache
//! documents, and serves them from memory over HTTP.
//!
//! # Layout
//!
//! The modules are listed in the order data flows through them:
//!
//! * `couch`: the only code that speaks CouchDB's HTTP API (documents, bulk
//!   writes, `_local` documents, `_changes` streams). Sequences are opaque.
//! * `feeds`: one follower task per database: waits for the database, loads
//!   it, follows its feed, detects deletion and re-creation, checkpoints.
//! * `rebuild`: the in-memory index of source documents, the dependency map,
//!   and the engine that turns feed events into exactly the affected builds.
//! * `domains`: one folder per output family; each has a pure core
//!   (documents in, output out) and a thin shell.
//! * `cache`: cache documents (format, hashing), the writer that stores them
//!   with `_bulk_docs`, and the in-memory mirror the HTTP layer reads.
//! * `http`: the phones and api listeners; they read the mirror, never CouchDB.
//! * `amqp`: the second front door of sysconf, Kazoo's AMQP API on RabbitMQ.
//!
//! Around them: `config` (load, validate, reload), `lifecycle` (signals,
//! readiness, systemd), `telemetry` (logs, metrics) and `app` (the wiring).

pub mod app;
pub mod cli;
pub mod config;
pub mod lifecycle;
pub mod telemetry;

pub mod amqp;
pub mod cache;
pub mod couch;
pub mod domains;
pub mod feeds;
pub mod http;
pub mod json;
pub mod rebuild;
pub mod xml;

#[cfg(test)]
mod tidy;

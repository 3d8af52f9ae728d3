//! Integration tests: the real `caldera` binary against a real
//! CouchDB-compatible server (pouchdb-server started by the harness, or the
//! server `COUCHDB_URL` points at). Run with `cargo test --test integration`.

mod acls;
mod acls_chaos;
mod amqp;
mod cache_store;
mod common;
mod console;
mod console_browser;
mod couch_client;
mod edge;
mod feeds;
mod incremental;
mod lifecycle;
mod phones;
mod phones_api;
mod phones_demo;
mod phones_incremental;
mod phones_listener;
mod phones_nat;
mod phones_stale;
mod robustness;
mod routing;
mod support;
mod sysconf_http;
mod two_builders;
mod writer_conflicts;

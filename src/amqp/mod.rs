//! The AMQP front door: caldera as a drop-in for Kazoo's sysconf
//! application. Requests arrive on the `sysconf` topic exchange
//! (`sysconf.get|set|flush`) through one shared queue, and are answered on
//! the `targeted` exchange to their `Server-ID`, with exactly the payloads
//! Kazoo sends.
//!
//! `message` is the pure core (Kazoo's validation and reply shapes, golden
//! tested against `fixtures/amqp/`); `dispatch` carries a request out
//! through the same `SysconfService` the HTTP API uses; `listener` is the
//! lapin shell (connection, topology, acks, reconnects, shutdown); `uri`
//! parses and redacts `amqp.url`.

pub mod dispatch;
pub mod listener;
pub mod message;
pub mod uri;

#[cfg(test)]
mod tests;

pub use listener::Listener;

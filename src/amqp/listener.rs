//! The IO shell of the AMQP front door, on lapin: one connection to
//! RabbitMQ, the `sysconf` topic exchange and the shared queue consumed by
//! every instance (competing consumers), replies on the `targeted` exchange.
//!
//! Lifecycle: wait for the cache to be built and mirrored (requests are
//! never answered from a cache not built or loaded yet), connect, declare,
//! consume. A lost connection (a broker restart, a missed heartbeat, a
//! closed channel) ends the session;
//! the listener reconnects after a capped, jittered backoff while the HTTP
//! API keeps serving. On cancellation it stops consuming, finishes the
//! requests it already holds, then closes its channels and the connection.
//!
//! Each delivery is handled in its own task (as Kazoo spawns a process per
//! message); the prefetch limit bounds how many run at once. A request is
//! acknowledged only after its reply is confirmed by the broker, so a
//! request whose reply was lost with the connection is redelivered. An
//! invalid message is answered with an error (when it names a `Server-ID`)
//! and rejected without requeue, so it can never loop.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::{self, Done};
use super::message::{self, ErrorKind, Parsed};
use crate::cache::mirror::Mirror;
use crate::config::AmqpConfig;
use crate::couch::ErrorKind as RetryKind;
use crate::couch::retry::Backoff;
use crate::domains::sysconf::service::SysconfService;
use crate::lifecycle::readiness::Readiness;
use crate::rebuild::engine;
use crate::telemetry::metrics::Metrics;

/// The readiness component: ready while consuming.
pub const COMPONENT: &str = "amqp";

/// How often the start-up waits checks whether the rest of the daemon is ready.
const READY_POLL: Duration = Duration::from_millis(50);
/// Longest wait for the broker to confirm one reply.
const CONFIRM_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for a buffered delivery after cancelling the consumer, and
/// for in-flight requests of a lost connection.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Longest wait for the broker to acknowledge a channel or connection close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// The AMQP front door; `run` until the token is cancelled.
pub struct Listener {
    pub config: AmqpConfig,
    /// This daemon's node name: `Node` of replies, part of the consumer tag.
    pub node: String,
    pub service: Arc<SysconfService>,
    pub mirror: Arc<Mirror>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// Why a session ended other than by cancellation.
#[derive(Debug)]
struct Lost {
    what: String,
    unauthorized: bool,
}

impl Lost {
    fn new(doing: &str, err: &lapin::Error) -> Lost {
        let unauthorized = matches!(
            err.kind(),
            lapin::ErrorKind::ProtocolError(e) if e.get_id() == 403
        );
        Lost {
            what: format!("{doing}: {err}"),
            unauthorized,
        }
    }

    fn because(what: impl Into<String>) -> Lost {
        Lost {
            what: what.into(),
            unauthorized: false,
        }
    }
}

/// A session's channels and consumer, once set up.
struct Opened {
    consuming: Channel,
    replies: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

/// What every request handler shares.
struct Handler {
    service: Arc<SysconfService>,
    node: String,
    reply_exchange: String,
    replies: Channel,
    max_message_bytes: usize,
    metrics: Arc<Metrics>,
    /// Cancelled when the reply channel is found closed: the session must
    /// end, since no request could be answered on it any more.
    broken: CancellationToken,
}

impl Listener {
    /// Tells `/readyz` whether the listener consumes, unless
    /// `amqp.gates_readiness` is off (then `/metrics` alone shows it).
    fn report_state(&self, state: Result<(), String>) {
        if self.config.gates_readiness {
            self.readiness.set(COMPONENT, state);
        }
    }

    pub async fn run(self, token: CancellationToken) {
        let Some(url) = self.config.url.clone() else {
            return;
        };
        self.report_state(Err(
            "waiting for the cache to be built and loaded before consuming".to_string(),
        ));
        if !self.wait_for_the_cache(&token).await {
            return;
        }
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let ended = self.session(url.expose(), &token, &mut backoff).await;
            self.metrics.amqp_connected.set(0);
            let Err(lost) = ended else {
                tracing::info!("AMQP listener stopped");
                return;
            };
            self.metrics.amqp_reconnects.inc();
            let why = format!("RabbitMQ at {}: {}", self.config.display_url, lost.what);
            tracing::warn!(reason = why, "AMQP connection lost; reconnecting");
            self.report_state(Err(why));
            let kind = if lost.unauthorized {
                RetryKind::Unauthorized
            } else {
                RetryKind::Transient
            };
            if !backoff.wait(kind, &token).await {
                return;
            }
        }
    }

    /// Waits until the mirror is warm and, on a building instance, the first
    /// full build is written: a request answered earlier could get
    /// `"undefined"` for a value that is only not built yet. (Not every
    /// readiness component: a slow ruleset feed must not hold sysconf up.)
    /// `false` when cancelled first.
    async fn wait_for_the_cache(&self, token: &CancellationToken) -> bool {
        let built = || self.readiness.component_ready(engine::COMPONENT) != Some(false);
        while !(self.mirror.is_loaded() && built()) {
            tokio::select! {
                () = token.cancelled() => return false,
                () = tokio::time::sleep(READY_POLL) => {}
            }
        }
        true
    }

    /// One connection, from connect to close.
    async fn session(
        &self,
        url: &str,
        token: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), Lost> {
        let connection = tokio::select! {
            () = token.cancelled() => return Ok(()),
            connected = self.connect(url) => connected?,
        };
        let served = self.serve(&connection, token, backoff).await;
        let _ = tokio::time::timeout(
            CLOSE_DEADLINE,
            connection.close(200, "caldera closing".into()),
        )
        .await;
        served
    }

    async fn connect(&self, url: &str) -> Result<Connection, Lost> {
        let mut uri = super::uri::parse(url).map_err(Lost::because)?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(self.config.heartbeat_secs);
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("caldera sysconf {}", self.node).into());
        match tokio::time::timeout(
            self.config.connect_timeout,
            Connection::connect_uri(uri, properties),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(Lost::new("cannot connect", &err)),
            Err(_) => Err(Lost::because(format!(
                "no connection within {:?}",
                self.config.connect_timeout
            ))),
        }
    }

    /// Opens the channels, declares the topology and consumes until the
    /// connection is lost or the token is cancelled.
    async fn serve(
        &self,
        connection: &Connection,
        token: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), Lost> {
        // A broker that accepts the connection but stalls must not hold
        // the listener (or a shutdown) forever.
        let opened = tokio::select! {
            () = token.cancelled() => return Ok(()),
            opened = tokio::time::timeout(self.config.connect_timeout, self.open(connection)) => {
                opened.map_err(|_| Lost::because(format!(
                    "the broker did not set up the channels within {:?}",
                    self.config.connect_timeout
                )))??
            }
        };
        backoff.reset();
        self.metrics.amqp_connected.set(1);
        self.report_state(Ok(()));
        tracing::info!(
            url = self.config.display_url,
            queue = self.config.queue,
            prefetch = self.config.prefetch,
            "consuming sysconf requests"
        );
        self.consume(opened, token).await
    }

    /// Both channels (replies with publisher confirms), the topology, the
    /// prefetch limit and the consumer.
    async fn open(&self, connection: &Connection) -> Result<Opened, Lost> {
        let consuming = open_channel(connection).await?;
        let replies = open_channel(connection).await?;
        replies
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Lost::new("enable publisher confirms", &e))?;
        self.declare(&consuming).await?;
        consuming
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| Lost::new("set the prefetch", &e))?;
        // A consumer tag is a short string: keep the node part short.
        let node: String = self.node.chars().take(200).collect();
        let tag = format!(
            "caldera-{node}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let consumer = consuming
            .basic_consume(
                self.config.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Lost::new("start consuming", &e))?;
        Ok(Opened {
            consuming,
            replies,
            consumer,
            tag,
        })
    }

    /// One task per delivery until the session ends; on cancellation the
    /// graceful stop.
    async fn consume(&self, opened: Opened, token: &CancellationToken) -> Result<(), Lost> {
        let Opened {
            consuming,
            replies,
            mut consumer,
            tag,
        } = opened;
        let handler = Arc::new(Handler {
            service: self.service.clone(),
            node: self.node.clone(),
            reply_exchange: self.config.reply_exchange.clone(),
            replies: replies.clone(),
            max_message_bytes: self.config.max_message_bytes,
            metrics: self.metrics.clone(),
            broken: CancellationToken::new(),
        });
        let in_flight = TaskTracker::new();
        let lost = loop {
            tokio::select! {
                biased;
                () = token.cancelled() => break None,
                () = handler.broken.cancelled() => {
                    break Some(Lost::because("the reply channel was closed"));
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(handler.clone().handle(delivery));
                    }
                    Some(Err(err)) => break Some(Lost::new("consuming", &err)),
                    None => break Some(Lost::because("the broker cancelled the consumer")),
                },
            }
        };
        if let Some(lost) = lost {
            // The broker requeues whatever was not acknowledged.
            in_flight.close();
            let _ = tokio::time::timeout(DRAIN_DEADLINE, in_flight.wait()).await;
            return Err(lost);
        }
        tracing::info!("stopping the AMQP listener: no new requests; finishing those in hand");
        let _ = consuming
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        // Deliveries already on their way were sent before the cancel:
        // answer them rather than leave them to time out.
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(DRAIN_DEADLINE, consumer.next()).await
        {
            in_flight.spawn(handler.clone().handle(delivery));
        }
        in_flight.close();
        in_flight.wait().await;
        for channel in [&consuming, &replies] {
            let _ = tokio::time::timeout(CLOSE_DEADLINE, channel.close(200, "OK".into())).await;
        }
        tracing::info!("closed the AMQP channels");
        Ok(())
    }

    /// Kazoo's topology: both exchanges and the shared queue as Kazoo
    /// declares them (transient; the queue non-exclusive and auto-deleted
    /// with its last consumer), so caldera and Kazoo's sysconf can share
    /// them during a migration.
    async fn declare(&self, channel: &Channel) -> Result<(), Lost> {
        let config = &self.config;
        for (exchange, kind) in [
            (&config.exchange, ExchangeKind::Topic),
            (&config.reply_exchange, ExchangeKind::Direct),
        ] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| Lost::new(&format!("declare exchange {exchange:?}"), &e))?;
        }
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(config.queue.as_str().into(), options, FieldTable::default())
            .await
            .map_err(|e| Lost::new(&format!("declare queue {:?}", config.queue), &e))?;
        for key in message::ROUTING_KEYS {
            channel
                .queue_bind(
                    config.queue.as_str().into(),
                    config.exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| Lost::new(&format!("bind {key}"), &e))?;
        }
        Ok(())
    }
}

async fn open_channel(connection: &Connection) -> Result<Channel, Lost> {
    connection
        .create_channel()
        .await
        .map_err(|e| Lost::new("open a channel", &e))
}

fn verdict(outcome: &'static str, settle: Settle) -> Verdict {
    Verdict { outcome, settle }
}

/// How a delivery is settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Rejected without requeue (dead-lettered if the queue has a policy for it).
    Reject,
    /// Back to the queue for another try (its reply could not be sent).
    Requeue,
    /// Not settled: the channel its reply needed is gone, the session ends,
    /// and the broker requeues it with the connection.
    Leave,
}

/// What became of a delivery: the outcome counted, and how it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    outcome: &'static str,
    settle: Settle,
}

impl Handler {
    async fn handle(self: Arc<Self>, delivery: Delivery) {
        let started = Instant::now();
        let parsed = self.parse(&delivery);
        let event = parsed.event.map_or("unknown", message::Event::name);
        let reply_to = parsed.reply_to.clone();
        let (reply, mut verdict) = self.answer(parsed, &delivery).await;
        if let Some(reply) = reply {
            verdict = self
                .reply(
                    &reply,
                    &reply_to,
                    event,
                    started,
                    verdict,
                    delivery.redelivered,
                )
                .await;
        }
        let settled = match verdict.settle {
            Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
            Settle::Reject => delivery.reject(BasicRejectOptions { requeue: false }).await,
            Settle::Requeue => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                delivery.nack(requeue).await
            }
            Settle::Leave => Ok(true),
        };
        if let Err(err) = settled {
            // The channel is gone: the broker redelivers the request.
            tracing::debug!(error = %err, "cannot settle an AMQP delivery");
        }
        self.metrics
            .amqp_messages
            .get_or_create(&Metrics::amqp(event, verdict.outcome))
            .inc();
    }

    /// Sends `reply` to the request's `Server-ID`; the verdict once tried.
    async fn reply(
        &self,
        reply: &Value,
        reply_to: &message::ReplyTo,
        event: &str,
        started: Instant,
        verdict: Verdict,
        redelivered: bool,
    ) -> Verdict {
        let Some(server_id) = &reply_to.server_id else {
            // An invalid message was logged already, and stays counted as invalid.
            if verdict.outcome != "invalid" {
                tracing::warn!(
                    event,
                    msg_id = reply_to.msg_id,
                    "a sysconf request without Server-ID cannot be answered"
                );
                return Verdict {
                    outcome: "no_server_id",
                    ..verdict
                };
            }
            return verdict;
        };
        if self
            .publish(server_id, reply_to.msg_id.as_deref(), reply)
            .await
        {
            self.metrics
                .amqp_reply_seconds
                .get_or_create(&Metrics::event(event))
                .observe(started.elapsed().as_secs_f64());
            return verdict;
        }
        // One more try (after a reconnect, or on another instance); a second
        // failure is final, so nothing loops. A requeue on this session
        // could come straight back to the broken channel: leave the request
        // to the broker, which requeues it when the session closes.
        let settle = match verdict.settle {
            Settle::Ack if !redelivered && !self.replies.status().connected() => Settle::Leave,
            Settle::Ack if !redelivered => Settle::Requeue,
            other => other,
        };
        if !self.replies.status().connected() {
            self.broken.cancel();
        }
        Verdict {
            outcome: "reply_failed",
            settle,
        }
    }

    fn parse(&self, delivery: &Delivery) -> Parsed {
        if delivery.data.len() > self.max_message_bytes {
            return message::oversized(&delivery.data, self.max_message_bytes);
        }
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|kind| kind.as_str());
        message::parse(&delivery.data, content_type)
    }

    /// The reply (if any), the outcome for metrics, and how to settle.
    async fn answer(&self, parsed: Parsed, delivery: &Delivery) -> (Option<Value>, Verdict) {
        let msg_id = parsed.reply_to.msg_id.as_deref();
        let request = match parsed.request {
            Ok(request) => request,
            Err(reason) => {
                tracing::warn!(
                    routing_key = delivery.routing_key.as_str(),
                    msg_id,
                    server_id = parsed.reply_to.server_id,
                    redelivered = delivery.redelivered,
                    reason,
                    "invalid sysconf message; rejected"
                );
                let reply = message::error_resp(&self.node, msg_id, ErrorKind::Invalid, &reason);
                return (Some(reply), verdict("invalid", Settle::Reject));
            }
        };
        let event = request.event().name();
        let category = request.category().to_string();
        let msg_id = msg_id.unwrap_or_default();
        let done = AssertUnwindSafe(dispatch::carry_out(
            &self.service,
            &self.node,
            msg_id,
            request,
        ))
        .catch_unwind()
        .await;
        match done {
            Ok(Ok(Done::Reply { body, outcome })) => (Some(body), verdict(outcome, Settle::Ack)),
            Ok(Ok(Done::Silent)) => (None, verdict("ok", Settle::Ack)),
            Ok(Err(failure)) => {
                tracing::warn!(
                    event,
                    category,
                    msg_id,
                    kind = failure.kind.name(),
                    reason = failure.message,
                    "sysconf request failed"
                );
                let reply =
                    message::error_resp(&self.node, Some(msg_id), failure.kind, &failure.message);
                (Some(reply), verdict("error", Settle::Ack))
            }
            Err(_) => {
                tracing::error!(
                    event,
                    category,
                    msg_id,
                    "a sysconf request panicked; rejected"
                );
                let reply = message::error_resp(
                    &self.node,
                    Some(msg_id),
                    ErrorKind::Internal,
                    "internal error while handling the request",
                );
                (Some(reply), verdict("error", Settle::Reject))
            }
        }
    }

    /// Publishes a reply and waits for the broker's confirm; `false` if it
    /// was not taken.
    async fn publish(&self, server_id: &str, msg_id: Option<&str>, reply: &Value) -> bool {
        let body = serde_json::to_vec(reply).expect("a JSON value serializes");
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into());
        if let Some(msg_id) = msg_id.filter(|id| id.len() <= message::MAX_ROUTING_KEY_BYTES) {
            properties = properties.with_correlation_id(msg_id.into());
        }
        let published = self
            .replies
            .basic_publish(
                self.reply_exchange.as_str().into(),
                server_id.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await;
        let confirm = match published {
            Ok(confirm) => tokio::time::timeout(CONFIRM_DEADLINE, confirm).await,
            Err(err) => {
                tracing::warn!(server_id, msg_id, error = %err, "cannot publish a sysconf reply");
                return false;
            }
        };
        match confirm {
            Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => true,
            Ok(Ok(Confirmation::Nack(_))) => {
                tracing::warn!(server_id, msg_id, "the broker refused a sysconf reply");
                false
            }
            Ok(Err(err)) => {
                tracing::warn!(server_id, msg_id, error = %err, "a sysconf reply was not confirmed");
                false
            }
            Err(_) => {
                tracing::warn!(
                    server_id,
                    msg_id,
                    "no confirm for a sysconf reply within {CONFIRM_DEADLINE:?}"
                );
                false
            }
        }
    }
}

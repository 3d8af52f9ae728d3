//! The RabbitMQ broker AMQP tests run against, and a Kazoo-shaped client.
//!
//! `AMQP_URL` (credentials may be in it) selects an existing broker.
//! Otherwise one broker (Debian's rabbitmq-server, private node on
//! loopback) is started per test process through `scripts/amqp-server`,
//! the first time a test asks for it; `--parent-pid` stops it with the
//! test process. Tests that stop and start a broker start their own
//! `BrokerProcess`.
//!
//! Tests share the broker and run in parallel: each gets its own exchange
//! and queue names (`Topology::unique`), so no two tests see each other's
//! messages. `CALDERA_SKIP_AMQP=1` skips these tests, saying so; without
//! it a broker that cannot be started fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::couch::repo_root;
use super::daemon::DaemonConfig;
use super::{Started, run_server_script};

/// Whether AMQP tests are to be skipped (`CALDERA_SKIP_AMQP=1`); says so.
pub fn skip(test: &str) -> bool {
    let skip = std::env::var("CALDERA_SKIP_AMQP").is_ok_and(|v| v.trim() == "1");
    if skip {
        eprintln!("{test}: SKIPPED because CALDERA_SKIP_AMQP=1 (no RabbitMQ test ran)");
    }
    skip
}

/// The existing broker from `AMQP_URL`, if one is configured.
pub fn external_url() -> Option<String> {
    std::env::var("AMQP_URL")
        .ok()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// The URL (with credentials) of the broker shared by this test process.
pub fn broker_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        external_url().unwrap_or_else(|| {
            let state = state_dir("shared");
            let pid = std::process::id().to_string();
            let args = [
                "start",
                path_str(&state),
                "--user",
                TEST_USER,
                "--parent-pid",
                &pid,
            ];
            run_script(&args).url
        })
    })
}

/// The user of the brokers the tests start; its password must never show
/// up in the daemon's logs.
const TEST_USER: &str = "caldera:amqp-test-secret";

/// The password in an AMQP URL (to check it is never logged).
pub fn password_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .unwrap_or_default()
}

fn state_dir(what: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("create the target tmp dir");
    tempfile::Builder::new()
        .prefix(&format!("amqp-{what}-{}-", std::process::id()))
        .tempdir_in(&base)
        .expect("create a broker state dir")
        .keep()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `scripts/amqp-server ...` and parses `url=... pid=...`.
fn run_script(args: &[&str]) -> Started {
    run_server_script(
        "amqp-server",
        args,
        "; install the broker with `scripts/amqp-server install`, point AMQP_URL at one, \
         or set CALDERA_SKIP_AMQP=1 to skip the AMQP tests",
    )
}

/// A broker of its own that a test can stop and start again on the same
/// port (an outage).
pub struct BrokerProcess {
    state: PathBuf,
    port: String,
    url: String,
    pid: Option<u32>,
}

impl BrokerProcess {
    pub fn start() -> BrokerProcess {
        let state = state_dir("dedicated");
        let pid = std::process::id().to_string();
        let args = [
            "start",
            path_str(&state),
            "--user",
            TEST_USER,
            "--parent-pid",
            &pid,
        ];
        let started = run_script(&args);
        let port = std::fs::read_to_string(state.join("port"))
            .expect("the script records the port")
            .trim()
            .to_string();
        BrokerProcess {
            state,
            port,
            url: started.url,
            pid: Some(started.pid),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the broker and waits until it has exited.
    pub fn stop(&mut self) {
        if self.pid.take().is_some() {
            let status = Command::new(repo_root().join("scripts/amqp-server"))
                .args(["stop", path_str(&self.state)])
                .status()
                .expect("run scripts/amqp-server stop");
            assert!(status.success(), "scripts/amqp-server stop failed");
        }
    }

    /// Starts the broker again on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.pid.is_none(), "the broker is still running");
        let pid = std::process::id().to_string();
        let started = run_script(&[
            "start",
            path_str(&self.state),
            "--port",
            &self.port,
            "--user",
            TEST_USER,
            "--parent-pid",
            &pid,
        ]);
        assert_eq!(started.url, self.url, "the broker came back elsewhere");
        self.pid = Some(started.pid);
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One test's exchange and queue names.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub reply_exchange: String,
    pub queue: String,
}

impl Topology {
    /// Names no other test uses.
    pub fn unique() -> Topology {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "t{}-{}-{:04x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        Topology {
            exchange: format!("sysconf.{tag}"),
            reply_exchange: format!("targeted.{tag}"),
            queue: format!("sysconf_listener.{tag}"),
        }
    }

    /// Kazoo's own names (for a broker of the test's own).
    pub fn kazoo() -> Topology {
        Topology {
            exchange: "sysconf".into(),
            reply_exchange: "targeted".into(),
            queue: "sysconf_listener".into(),
        }
    }

    /// Points a daemon at `url` with these names and test timings.
    pub fn configure(&self, config: &mut DaemonConfig, url: &str) {
        config
            .set("amqp.url", url)
            .set("amqp.exchange", self.exchange.as_str())
            .set("amqp.reply_exchange", self.reply_exchange.as_str())
            .set("amqp.queue", self.queue.as_str())
            .set("amqp.heartbeat_secs", 5)
            .set("amqp.backoff_initial_ms", 50)
            .set("amqp.backoff_max_ms", 1000);
    }
}

/// Replies received, by `Msg-ID` (`""` for replies without one).
#[derive(Default)]
struct Inbox {
    replies: Mutex<BTreeMap<String, Vec<Value>>>,
    arrived: Notify,
}

/// A Kazoo-shaped client: its own reply queue bound to the reply exchange
/// (like `kz_amqp_worker`), requests with Kazoo's default headers.
pub struct KazooClient {
    connection: Connection,
    channel: Channel,
    pub topology: Topology,
    /// The reply queue, sent as `Server-ID`.
    pub server_id: String,
    /// `Node` of requests (the requester's Erlang node in Kazoo).
    pub node: String,
    inbox: Arc<Inbox>,
}

impl KazooClient {
    pub async fn connect(url: &str, topology: &Topology, node: &str) -> KazooClient {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the test client cannot reach RabbitMQ: {e}"));
        let channel = connection.create_channel().await.expect("a channel");
        for (exchange, kind) in [
            (&topology.exchange, ExchangeKind::Topic),
            (&topology.reply_exchange, ExchangeKind::Direct),
        ] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("declare an exchange");
        }
        let server_id = format!("targeted.kazoo-{:08x}", fastrand::u32(..));
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(server_id.as_str().into(), exclusive, FieldTable::default())
            .await
            .expect("declare the reply queue");
        channel
            .queue_bind(
                server_id.as_str().into(),
                topology.reply_exchange.as_str().into(),
                server_id.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the reply queue");
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = channel
            .basic_consume(
                server_id.as_str().into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .expect("consume the reply queue");
        let inbox = Arc::new(Inbox::default());
        let sink = inbox.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let reply: Value = serde_json::from_slice(&delivery.data).unwrap_or_else(
                    |_| json!({"unparsable": String::from_utf8_lossy(&delivery.data)}),
                );
                let msg_id = reply["Msg-ID"].as_str().unwrap_or_default().to_string();
                sink.replies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(msg_id)
                    .or_default()
                    .push(reply);
                sink.arrived.notify_waiters();
            }
        });
        KazooClient {
            connection,
            channel,
            topology: topology.clone(),
            server_id,
            node: node.to_string(),
            inbox,
        }
    }

    /// Declares the shared queue and its bindings as the daemon will (and
    /// as Kazoo does), so requests can wait in it before any daemon runs.
    pub async fn declare_sysconf_queue(&self) {
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self.topology.queue.as_str();
        self.channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .expect("declare the sysconf queue");
        for key in ["sysconf.get", "sysconf.set", "sysconf.flush"] {
            self.channel
                .queue_bind(
                    queue.into(),
                    self.topology.exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the sysconf queue");
        }
    }

    /// A request with Kazoo's default headers, a fresh `Msg-ID`, this
    /// client's `Server-ID` and `Node`, and `fields`.
    pub fn request(&self, event_name: &str, fields: Value) -> Value {
        let mut request = json!({
            "App-Name": "ecallmgr",
            "App-Version": "4.3.0",
            "Event-Category": "sysconf",
            "Event-Name": event_name,
            "Msg-ID": format!("{:016x}", fastrand::u64(..)),
            "Server-ID": self.server_id,
            "Node": self.node,
        });
        for (name, value) in fields.as_object().expect("fields are an object") {
            request[name] = value.clone();
        }
        request
    }

    /// Publishes raw bytes with a routing key and content type.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], content_type: Option<&str>) {
        let mut properties = BasicProperties::default();
        if let Some(kind) = content_type {
            properties = properties.with_content_type(kind.into());
        }
        self.channel
            .basic_publish(
                self.topology.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("the publish went out");
    }

    /// Publishes a request as Kazoo does (`application/json`).
    pub async fn publish(&self, routing_key: &str, request: &Value) {
        let body = serde_json::to_vec(request).expect("JSON serializes");
        self.publish_raw(routing_key, &body, Some("application/json"))
            .await;
    }

    /// Every reply received so far for `msg_id`.
    pub fn replies(&self, msg_id: &str) -> Vec<Value> {
        self.inbox
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(msg_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The number of replies received, over all `Msg-ID`s.
    pub fn reply_count(&self) -> usize {
        self.inbox
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Every reply received, by `Msg-ID`.
    pub fn all_replies(&self) -> BTreeMap<String, Vec<Value>> {
        self.inbox
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for the first reply to `msg_id`.
    pub async fn wait_reply(&self, msg_id: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.inbox.arrived.notified();
            if let Some(reply) = self.replies(msg_id).into_iter().next() {
                return Some(reply);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), arrived).await;
        }
    }

    /// Publishes a request and waits for its reply (panics after 10 s).
    pub async fn call(&self, routing_key: &str, request: &Value) -> Value {
        self.publish(routing_key, request).await;
        let msg_id = request["Msg-ID"].as_str().unwrap_or_default();
        self.wait_reply(msg_id, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no reply to {request} within 10 s"))
    }

    /// Deletes an exchange (a broker-side accident the daemon must survive).
    pub async fn delete_exchange(&self, exchange: &str) {
        self.channel
            .exchange_delete(exchange.into(), Default::default())
            .await
            .expect("delete the exchange");
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// `request` without the fields `names`.
pub fn without(mut request: Value, names: &[&str]) -> Value {
    if let Some(fields) = request.as_object_mut() {
        for name in names {
            fields.remove(*name);
        }
    }
    request
}

/// The number of messages waiting in `queue` (passive declare), `None` if
/// the queue does not exist.
pub async fn queue_depth(url: &str, queue: &str) -> Option<u32> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = connection.close(200, "done".into()).await;
    depth
}

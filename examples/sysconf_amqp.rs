//! A Kazoo-shaped sysconf client for the command line: publishes a
//! `get_req`, `set_req` or `flush_req` to the `sysconf` exchange as a Kazoo
//! node does (default headers, its own reply queue bound to `targeted` as
//! `Server-ID`) and prints the reply. Used by the README's quick start and
//! handy against any sysconf, caldera's or Kazoo's.
//!
//! ```sh
//! cargo run --example sysconf_amqp -- --url amqp://caldera:caldera-dev@127.0.0.1:5672/%2f \
//!     get ecallmgr fetch_timeout --node ecallmgr@kz2.example.net
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Ask a sysconf (caldera or Kazoo) over AMQP, as a Kazoo node does")]
struct Args {
    /// The broker, e.g. amqp://user:password@127.0.0.1:5672/%2f
    #[arg(long, env = "AMQP_URL")]
    url: String,
    #[arg(long, default_value = "sysconf")]
    exchange: String,
    #[arg(long, default_value = "targeted")]
    reply_exchange: String,
    /// The requester's node (`Node`): the section get looks in first, and
    /// the section a node-specific set writes.
    #[arg(long, global = true, default_value = "sysconf_amqp@localhost")]
    node: String,
    /// How long to wait for the reply.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    request: Request,
}

#[derive(Subcommand)]
enum Request {
    /// get_req: the value of CATEGORY KEY... (several keys: a nested path).
    Get {
        category: String,
        #[arg(required = true)]
        key: Vec<String>,
        /// Returned (and written to default.KEY) when the key is nowhere; JSON.
        #[arg(long)]
        default: Option<String>,
    },
    /// set_req: store a JSON value (null deletes).
    Set {
        category: String,
        #[arg(required = true)]
        key: Vec<String>,
        #[arg(long)]
        value: String,
        /// Write under --node instead of default.
        #[arg(long)]
        node_specific: bool,
    },
    /// flush_req: re-read CATEGORY (sysconf sends no reply).
    Flush { category: String },
}

/// Prints a line; a closed stdout (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn json_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn key(path: Vec<String>) -> Value {
    match <[String; 1]>::try_from(path) {
        Ok([one]) => Value::String(one),
        Err(path) => json!(path),
    }
}

/// The routing key and the request's own fields.
fn request(request: Request) -> (&'static str, &'static str, Value) {
    match request {
        Request::Get {
            category,
            key: path,
            default,
        } => {
            let mut fields = json!({"Category": category, "Key": key(path)});
            if let Some(default) = default {
                fields["Default"] = json_arg(&default);
            }
            ("sysconf.get", "get_req", fields)
        }
        Request::Set {
            category,
            key: path,
            value,
            node_specific,
        } => (
            "sysconf.set",
            "set_req",
            json!({"Category": category, "Key": key(path), "Value": json_arg(&value),
                   "Node-Specific": node_specific}),
        ),
        Request::Flush { category } => {
            ("sysconf.flush", "flush_req", json!({"Category": category}))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sysconf_amqp: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let connection = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let reply_queue = format!("targeted.sysconf_amqp-{:08x}", fastrand::u32(..));
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            reply_queue.as_str().into(),
            exclusive,
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_bind(
            reply_queue.as_str().into(),
            args.reply_exchange.as_str().into(),
            reply_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot bind to {:?}: {e}", args.reply_exchange))?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut replies = channel
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;

    let (routing_key, event, fields) = request(args.request);
    let msg_id = format!("{:016x}", fastrand::u64(..));
    let mut message = json!({
        "App-Name": "sysconf_amqp", "App-Version": env!("CARGO_PKG_VERSION"),
        "Event-Category": "sysconf", "Event-Name": event,
        "Msg-ID": msg_id, "Server-ID": reply_queue, "Node": args.node,
    });
    for (name, value) in fields.as_object().into_iter().flatten() {
        message[name] = value.clone();
    }
    let body = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
    channel
        .basic_publish(
            args.exchange.as_str().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .map_err(|e| e.to_string())?;
    if event == "flush_req" {
        say(&format!(
            "published {event} (sysconf sends no reply to a flush)"
        ));
        return Ok(());
    }
    let wait = async {
        while let Some(Ok(delivery)) = replies.next().await {
            let reply: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
            if reply["Msg-ID"] == msg_id {
                return Some(reply);
            }
        }
        None
    };
    let reply = tokio::time::timeout(Duration::from_millis(args.timeout_ms), wait)
        .await
        .map_err(|_| format!("no reply within {} ms", args.timeout_ms))?
        .ok_or("the reply queue closed")?;
    say(&serde_json::to_string_pretty(&reply).map_err(|e| e.to_string())?);
    let _ = connection.close(200, "done".into()).await;
    if reply["Event-Category"] == "error" {
        return Err("the request failed (see Error-Message)".into());
    }
    Ok(())
}

//! `amqp.*`: the Kazoo-compatible AMQP front door of sysconf. Off unless
//! `amqp.url` is set.

use std::time::Duration;

use super::Secret;
use super::reader::Reader;

/// The AMQP listener's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpConfig {
    /// The broker (`amqp://user:password@host:5672/vhost`); `None`: off.
    pub url: Option<Secret>,
    /// `url` with the password hidden, safe to log.
    pub display_url: String,
    /// The shared queue every caldera (and Kazoo sysconf) instance consumes.
    pub queue: String,
    /// The topic exchange requests arrive on.
    pub exchange: String,
    /// The direct exchange replies go to, routed by the request's `Server-ID`.
    pub reply_exchange: String,
    /// Requests delivered but not yet answered, at most (AMQP prefetch).
    pub prefetch: u16,
    /// AMQP heartbeat asked of the broker; a silent connection is dropped
    /// after two missed beats.
    pub heartbeat_secs: u16,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A larger message is refused as invalid without being parsed.
    pub max_message_bytes: usize,
    /// Whether `/readyz` waits for (and, during an outage, drops with) the
    /// broker connection. Off for instances whose readiness probe steers
    /// phone or API traffic, which does not need RabbitMQ.
    pub gates_readiness: bool,
}

/// The first characters AMQP reserves for the broker's own names.
const RESERVED_PREFIX: &str = "amq.";

pub(super) fn read(r: &mut Reader<'_>) -> AmqpConfig {
    let text = r.opt_string("amqp.url").filter(|u| !u.trim().is_empty());
    let display_url = match text.as_deref().map(crate::amqp::uri::parse) {
        None => String::new(),
        Some(Ok(uri)) => crate::amqp::uri::redacted(&uri),
        Some(Err(reason)) => {
            r.error("amqp.url", reason);
            String::new()
        }
    };
    let mut name = |key: &str, default: &str| {
        let value = r.string(key, default);
        if let Err(reason) = check_name(&value) {
            r.error(key, reason);
        }
        value
    };
    let queue = name("amqp.queue", "sysconf_listener");
    let exchange = name("amqp.exchange", "sysconf");
    let reply_exchange = name("amqp.reply_exchange", "targeted");
    let config = AmqpConfig {
        url: text.map(Secret::new),
        display_url,
        queue,
        exchange,
        reply_exchange,
        prefetch: r.int("amqp.prefetch", 64, 1, 65_535) as u16,
        heartbeat_secs: r.int("amqp.heartbeat_secs", 20, 0, 3_600) as u16,
        connect_timeout: r.millis("amqp.connect_timeout_ms", 5_000, 100, 120_000),
        backoff_initial: r.millis("amqp.backoff_initial_ms", 250, 10, 60_000),
        backoff_max: r.millis("amqp.backoff_max_ms", 30_000, 100, 3_600_000),
        max_message_bytes: r.int("amqp.max_message_bytes", 1 << 20, 1_024, 1 << 27) as usize,
        gates_readiness: r.bool("amqp.gates_readiness", true),
    };
    if config.backoff_initial > config.backoff_max {
        r.error(
            "amqp.backoff_initial_ms",
            "is larger than amqp.backoff_max_ms",
        );
    }
    if config.exchange == config.reply_exchange {
        r.error(
            "amqp.reply_exchange",
            "is the same exchange as amqp.exchange (one is a topic exchange, the other direct)",
        );
    }
    config
}

/// AMQP short strings: 1..=255 bytes; `amq.` names are the broker's.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes long".to_string());
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "{name:?} starts with {RESERVED_PREFIX:?}, which RabbitMQ reserves"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LoadError};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn off_by_default_with_kazoo_names() {
        let config = Config::from_toml("", &no_env).unwrap();
        assert!(config.amqp.url.is_none());
        assert_eq!(config.amqp.queue, "sysconf_listener");
        assert_eq!(config.amqp.exchange, "sysconf");
        assert_eq!(config.amqp.reply_exchange, "targeted");
        assert_eq!(config.amqp.prefetch, 64);
    }

    #[test]
    fn the_url_is_kept_secret() {
        let env = |name: &str| {
            (name == "CALDERA_AMQP_URL").then(|| "amqp://kazoo:pa55@127.0.0.1:5673/%2f".to_string())
        };
        let config = Config::from_toml("", &env).unwrap();
        assert_eq!(
            config.amqp.display_url,
            "amqp://kazoo:***@127.0.0.1:5673/%2F"
        );
        assert!(!format!("{config:?}").contains("pa55"));
    }

    #[test]
    fn the_example_config_lists_every_amqp_key() {
        let asked = std::cell::RefCell::new(Vec::new());
        let record = |name: &str| {
            asked.borrow_mut().push(name.to_string());
            None
        };
        Config::from_toml("", &record).unwrap();
        let keys: Vec<String> = asked
            .into_inner()
            .iter()
            .filter_map(|n| n.strip_prefix("CALDERA_AMQP_"))
            .map(str::to_ascii_lowercase)
            .collect();
        assert!(keys.len() >= 10, "{keys:?}");
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("caldera.example.toml"),
        )
        .unwrap();
        let section = example.split("\n[amqp]").nth(1).expect("an [amqp] section");
        let section = section.split("\n[").next().unwrap_or_default();
        let listed = |key: &str| {
            section.lines().any(|line| {
                let line = line.trim_start_matches('#').trim();
                line.starts_with(&format!("{key} ="))
            })
        };
        for key in keys {
            assert!(listed(&key), "amqp.{key} is not in caldera.example.toml");
        }
        // The example itself is a valid configuration.
        Config::from_toml(&example, &no_env).unwrap();
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
            [amqp]
            url = "http://kazoo:pa55@host/"
            queue = "amq.mine"
            exchange = "same"
            reply_exchange = "same"
            prefetch = 0
            backoff_initial_ms = 5000
            backoff_max_ms = 1000
        "#;
        let Err(LoadError::Invalid(errors)) = Config::from_toml(text, &no_env) else {
            panic!("expected errors");
        };
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "amqp.url",
            "amqp.queue",
            "amqp.reply_exchange",
            "amqp.prefetch",
            "amqp.backoff_initial_ms",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let all: String = errors.iter().map(|e| e.message.clone()).collect();
        assert!(!all.contains("pa55"), "{all}");
    }
}

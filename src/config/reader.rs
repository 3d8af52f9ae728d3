//! A typed reader over a parsed TOML table that collects every problem
//! instead of stopping at the first, and lets an environment variable
//! override any key (`couchdb.url` ← `CALDERA_COUCHDB_URL`).
//!
//! serde stops at the first error; operators want the whole list at once, so
//! the configuration is read key by key through this reader.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use toml::{Table, Value};

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File,
    Env(String),
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Reads keys from a table with environment overrides, recording errors.
pub struct Reader<'a> {
    table: Table,
    env: &'a dyn Fn(&str) -> Option<String>,
    seen: BTreeSet<String>,
    pub errors: Vec<ConfigError>,
}

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("CALDERA_{}", key.replace('.', "_").to_ascii_uppercase())
}

impl<'a> Reader<'a> {
    pub fn new(table: Table, env: &'a dyn Fn(&str) -> Option<String>) -> Reader<'a> {
        Reader {
            table,
            env,
            seen: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// The raw value of `key`: the environment wins over the file.
    fn raw(&mut self, key: &str) -> Option<(Value, Origin)> {
        self.seen.insert(key.to_string());
        let var = env_name(key);
        if let Some(text) = (self.env)(&var) {
            return Some((Value::String(text), Origin::Env(var)));
        }
        lookup(&self.table, key).map(|value| (value.clone(), Origin::File))
    }

    fn wrong_type(&mut self, key: &str, origin: &Origin, expected: &str, got: &Value) {
        let place = match origin {
            Origin::Env(var) => format!(" (from {var})"),
            _ => String::new(),
        };
        self.error(
            key,
            format!("expected {expected}, found {}{place}", describe(got)),
        );
    }

    pub fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.raw(key)? {
            (Value::String(text), _) => Some(text),
            (other, origin) => {
                self.wrong_type(key, &origin, "a string", &other);
                None
            }
        }
    }

    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_string())
    }

    pub fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some((Value::Boolean(b), _)) => b,
            Some((Value::String(text), Origin::Env(var))) => match text.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    self.error(
                        key,
                        format!("expected true or false, found {text:?} (from {var})"),
                    );
                    default
                }
            },
            Some((other, origin)) => {
                self.wrong_type(key, &origin, "true or false", &other);
                default
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let Some((value, origin)) = self.raw(key) else {
            return default;
        };
        let number = match (&value, &origin) {
            (Value::Integer(n), _) => Some(*n),
            (Value::String(text), Origin::Env(_)) => text.trim().parse::<i64>().ok(),
            _ => None,
        };
        let Some(number) = number else {
            self.wrong_type(key, &origin, "an integer", &value);
            return default;
        };
        match u64::try_from(number) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(key, format!("{number} is out of range {min}..={max}"));
                default
            }
        }
    }

    pub fn millis(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.int(key, default, min, max))
    }

    pub fn socket_addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let text = self.string(key, default);
        match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.error(
                    key,
                    format!("{text:?} is not an address like 127.0.0.1:8081 or [::]:8080"),
                );
                default.parse().expect("default address parses")
            }
        }
    }

    /// One of `choices`.
    pub fn choice(
        &mut self,
        key: &str,
        default: &'static str,
        choices: &[&'static str],
    ) -> &'static str {
        let text = self.string(key, default);
        match choices.iter().find(|c| **c == text) {
            Some(choice) => choice,
            None => {
                self.error(
                    key,
                    format!("{text:?} is not one of {}", choices.join(", ")),
                );
                default
            }
        }
    }

    /// Every key present in the file that nothing asked for.
    pub fn finish(mut self) -> Vec<ConfigError> {
        let mut unknown = Vec::new();
        collect_leaves(&self.table, "", &mut unknown);
        for key in unknown {
            if !self.seen.contains(&key) {
                self.error(&key, "unknown key");
            }
        }
        self.errors
    }
}

fn lookup<'t>(table: &'t Table, key: &str) -> Option<&'t Value> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        let value = current.get(part)?;
        if parts.peek().is_none() {
            return Some(value);
        }
        current = value.as_table()?;
    }
    None
}

fn collect_leaves(table: &Table, prefix: &str, out: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Table(inner) => collect_leaves(inner, &key, out),
            _ => out.push(key),
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(n) => format!("the integer {n}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "a list".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn environment_overrides_file_and_is_typed() {
        let table: Table = toml::from_str("[feeds]\nheartbeat_ms = 1000\n").unwrap();
        let env = |name: &str| (name == "CALDERA_FEEDS_HEARTBEAT_MS").then(|| "2500".to_string());
        let mut reader = Reader::new(table, &env);
        assert_eq!(reader.int("feeds.heartbeat_ms", 30000, 1, 60000), 2500);
        assert!(reader.finish().is_empty());
    }

    #[test]
    fn collects_every_error_including_unknown_keys() {
        let table: Table = toml::from_str("a = \"x\"\nb = 99\n[s]\nc = true\ntypo = 1\n").unwrap();
        let mut reader = Reader::new(table, &no_env);
        reader.int("a", 1, 0, 10);
        reader.int("b", 1, 0, 10);
        reader.string("s.c", "");
        let errors = reader.finish();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "s.c", "s.typo"]);
        assert!(errors[1].message.contains("out of range"));
        assert_eq!(errors[3].message, "unknown key");
    }
}

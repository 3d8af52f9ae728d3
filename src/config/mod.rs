//! The daemon's configuration: a TOML file, every key overridable by an
//! environment variable, read into a validated `Config` before anything
//! starts. All problems are reported at once.
//!
//! Which keys a running daemon honours on SIGHUP is decided here too
//! (`Config::needs_restart`).

mod amqp;
mod edge;
mod reader;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

pub use amqp::AmqpConfig;
pub use edge::{DeviceAuth, EdgeConfig, ProxyPolicyName};
use reader::Reader;
pub use reader::{ConfigError, env_name};

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/caldera/caldera.toml";

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This daemon's node name: the default `Node` of sysconf requests and the
    /// name of its checkpoints.
    pub node: String,
    /// This daemon's zone, searched after the node section by sysconf get.
    pub zone: String,
    pub couchdb: CouchConfig,
    pub databases: Databases,
    pub feeds: FeedConfig,
    pub build: BuildConfig,
    pub cache: CacheConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub sysconf: SysconfConfig,
    pub acls: AclsConfig,
    pub phones: PhonesConfig,
    /// The Kazoo-compatible AMQP front door of sysconf (`amqp.*`).
    pub amqp: AmqpConfig,
    pub edge: EdgeConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CouchConfig {
    /// Base URL without credentials (safe to log).
    pub url: Url,
    pub credentials: Option<Credentials>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// Physical database names, by the role caldera gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Databases {
    pub system_config: String,
    pub sip_auth: String,
    pub offnet: String,
    pub units: String,
    pub provisioning: String,
    pub edge_config: String,
    pub edge_registry: String,
    pub edge_telemetry: String,
    pub cache: String,
}

impl Databases {
    /// `(config key, name)` for every database.
    pub fn all(&self) -> [(&'static str, &str); 9] {
        [
            ("system_config", &self.system_config),
            ("sip_auth", &self.sip_auth),
            ("offnet", &self.offnet),
            ("units", &self.units),
            ("provisioning", &self.provisioning),
            ("edge_config", &self.edge_config),
            ("edge_registry", &self.edge_registry),
            ("edge_telemetry", &self.edge_telemetry),
            ("cache", &self.cache),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    Continuous,
    Longpoll,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    pub mode: FeedMode,
    pub heartbeat: Duration,
    /// No byte for this long on an open feed → reconnect.
    pub inactivity_timeout: Duration,
    /// Close and reopen a feed this often, which is also when a deleted or
    /// re-created database is noticed on servers that keep dead feeds open.
    pub rotate_after: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub missing_db_poll: Duration,
    pub load_page_size: u64,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildConfig {
    /// Off: this instance only mirrors and serves the cache database.
    pub enabled: bool,
    pub debounce: Duration,
    pub max_batch: usize,
    pub workers: usize,
    pub write_batch: usize,
    pub max_output_bytes: usize,
}

/// The mirror's on-disk store (`cache.*`, see `cache::store`).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// The store file; `None` (the key empty or absent): no store, every
    /// output in memory and the cache database read whole at each start.
    pub store_path: Option<PathBuf>,
    /// Outputs waiting for the store's disk at most; loading pauses above.
    pub max_pending_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub phones_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// When set, admin endpoints need `Authorization: Bearer <token>`;
    /// when unset they answer only clients on loopback.
    pub admin_token: Option<Secret>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `caldera=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SysconfConfig {
    /// How long a write through the API waits for the mirror to show it.
    pub write_wait: Duration,
    /// Attempts of a read-modify-write on `system_config` when it conflicts.
    pub write_attempts: u32,
}

/// The ACL domain's DNS resolver (`acls.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct AclsConfig {
    /// Hard deadline of one DNS query.
    pub dns_timeout: Duration,
    /// Hostnames resolved at once.
    pub dns_concurrency: usize,
    /// Name servers (`ip:port`) to ask instead of /etc/resolv.conf's.
    pub dns_servers: Vec<SocketAddr>,
    /// Answers are kept at least this long (also the retry delay after a
    /// failed lookup) …
    pub dns_min_ttl: Duration,
    /// … and at most this long, whatever their TTL says.
    pub dns_max_ttl: Duration,
}

/// Phone provisioning (`phones.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct PhonesConfig {
    /// Misses (unknown MACs, mismatched User-Agents, malformed paths, wrong
    /// credentials) a source may make per window; 0 turns limiting off.
    pub rate_limit_misses: u32,
    pub rate_limit_window: Duration,
    /// How long a source that spent its budget is refused.
    pub rate_limit_cooldown: Duration,
    /// Most sources tracked at once.
    pub rate_limit_max_sources: usize,
    /// How long a device served from an address stays trusted there (served
    /// while the address cools down), after it was last served.
    pub trusted_pair_ttl: Duration,
    /// Most (address, MAC) pairs remembered; 0 turns trust off.
    pub trusted_pairs_max: usize,
    /// Where the pairs are kept across restarts (unset: the systemd state
    /// directory, `$STATE_DIRECTORY`, when there is one; else memory only).
    pub trusted_pairs_file: Option<PathBuf>,
    /// How often the pairs are saved when they changed (and at shutdown).
    pub trusted_pairs_save: Duration,
    /// How long a Digest nonce stays valid.
    pub nonce_ttl: Duration,
    /// The key signing nonces; set the same on every replica so a nonce
    /// from one is accepted by the others (unset: random per process).
    pub nonce_secret: Option<Secret>,
    /// Requests kept per unit for `/v1/units/{id}/requests`.
    pub request_log_size: usize,
    /// Largest Polycom log upload accepted.
    pub max_upload_bytes: usize,
    /// Memory for the phone files served recently (`phones::hot`), bytes.
    pub hot_set_bytes: usize,
    /// Proxies whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a configuration API write waits for its outputs to be built.
    pub write_wait: Duration,
}

/// What went wrong loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), list(.0))]
    Invalid(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loaded configuration and the notes worth logging about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads `path` (a missing file is fine only at the default location:
    /// then defaults and environment variables apply).
    ///
    /// # Errors
    /// The file cannot be read or parsed, or any key is invalid.
    pub fn load(path: &Path, explicit: bool) -> Result<Loaded, LoadError> {
        let env = |name: &str| std::env::var(name).ok();
        let mut warnings = unknown_env_vars(std::env::vars().map(|(k, _)| k));
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                warnings.push(format!(
                    "{} does not exist: using defaults and CALDERA_* variables",
                    path.display()
                ));
                String::new()
            }
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config = Config::from_toml(&text, &env).map_err(|err| match err {
            LoadError::Syntax { message, .. } => LoadError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(Loaded { config, warnings })
    }

    /// Parses and validates a configuration from TOML text.
    ///
    /// # Errors
    /// The text is not TOML, or any key is invalid.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, LoadError> {
        let table: toml::Table = toml::from_str(text).map_err(|err| LoadError::Syntax {
            path: PathBuf::new(),
            message: err.to_string(),
        })?;
        let mut reader = Reader::new(table, env);
        let config = read(&mut reader);
        let mut errors = std::mem::take(&mut reader.errors);
        validate(&config, &mut errors);
        errors.extend(reader.finish());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(errors))
        }
    }

    /// The keys that differ between `self` and `new` but only take effect
    /// after a restart.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |changed: bool, key: &'static str| {
            if changed {
                keys.push(key);
            }
        };
        check(self.node != new.node, "node");
        check(self.couchdb != new.couchdb, "couchdb.*");
        check(self.databases != new.databases, "databases.*");
        check(self.build != new.build, "build.*");
        check(self.cache != new.cache, "cache.*");
        check(self.feeds != new.feeds, "feeds.*");
        check(self.shutdown != new.shutdown, "shutdown.grace_ms");
        check(
            self.http.phones_listen != new.http.phones_listen,
            "http.phones.listen",
        );
        check(
            self.http.api_listen != new.http.api_listen,
            "http.api.listen",
        );
        check(
            (
                self.http.max_body_bytes,
                self.http.max_header_bytes,
                self.http.max_headers,
            ) != (
                new.http.max_body_bytes,
                new.http.max_header_bytes,
                new.http.max_headers,
            ) || self.http.request_timeout != new.http.request_timeout
                || self.http.header_read_timeout != new.http.header_read_timeout,
            "http limits and timeouts",
        );
        check(self.log.format != new.log.format, "log.format");
        check(self.acls != new.acls, "acls.*");
        check(
            self.phones.nonce_secret != new.phones.nonce_secret,
            "phones.auth.nonce_secret",
        );
        check(
            self.phones.write_wait != new.phones.write_wait,
            "phones.write_wait_ms",
        );
        check(
            (
                &self.phones.trusted_pairs_file,
                self.phones.trusted_pairs_save,
            ) != (
                &new.phones.trusted_pairs_file,
                new.phones.trusted_pairs_save,
            ),
            "phones.trusted_pairs_file, phones.trusted_pairs_save_secs",
        );
        check(self.amqp != new.amqp, "amqp.*");
        keys
    }
}

fn read(r: &mut Reader<'_>) -> Config {
    Config {
        node: r.string("node", &default_node()),
        zone: r.string("zone", "local"),
        couchdb: read_couchdb(r),
        databases: read_databases(r),
        feeds: read_feeds(r),
        build: read_build(r),
        cache: CacheConfig {
            store_path: r
                .opt_string("cache.store_path")
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
            max_pending_bytes: r.int("cache.max_pending_bytes", 64 << 20, 1 << 20, 16 << 30)
                as usize,
        },
        http: read_http(r),
        log: LogConfig {
            format: match r.choice("log.format", "text", &["text", "json"]) {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            },
            level: r.string("log.level", "info"),
        },
        shutdown: ShutdownConfig {
            grace: r.millis("shutdown.grace_ms", 10_000, 100, 600_000),
        },
        sysconf: SysconfConfig {
            write_wait: r.millis("sysconf.write_wait_ms", 3_000, 0, 60_000),
            write_attempts: r.int("sysconf.write_attempts", 10, 1, 100) as u32,
        },
        acls: read_acls(r),
        phones: read_phones(r),
        amqp: amqp::read(r),
        edge: edge::read(r),
    }
}

fn read_phones(r: &mut Reader<'_>) -> PhonesConfig {
    let proxies = r.opt_string("phones.trusted_proxies").unwrap_or_default();
    let mut trusted_proxies = Vec::new();
    for part in proxies.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part
            .parse::<ipnet::IpNet>()
            .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => r.error(
                "phones.trusted_proxies",
                format!("{part:?} is not a network (a.b.c.d/n) or an address"),
            ),
        }
    }
    PhonesConfig {
        rate_limit_misses: r.int("phones.rate_limit.misses", 20, 0, 1_000_000) as u32,
        rate_limit_window: Duration::from_secs(r.int(
            "phones.rate_limit.window_secs",
            60,
            1,
            86_400,
        )),
        rate_limit_cooldown: Duration::from_secs(r.int(
            "phones.rate_limit.cooldown_secs",
            300,
            1,
            86_400,
        )),
        rate_limit_max_sources: r.int("phones.rate_limit.max_sources", 100_000, 10, 10_000_000)
            as usize,
        trusted_pair_ttl: Duration::from_secs(r.int(
            "phones.trusted_pair_ttl_secs",
            3 * 86_400,
            60,
            366 * 86_400,
        )),
        trusted_pairs_max: r.int("phones.trusted_pairs_max", 100_000, 0, 10_000_000) as usize,
        trusted_pairs_file: r
            .opt_string("phones.trusted_pairs_file")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        trusted_pairs_save: Duration::from_secs(r.int(
            "phones.trusted_pairs_save_secs",
            60,
            1,
            86_400,
        )),
        nonce_ttl: Duration::from_secs(r.int("phones.auth.nonce_ttl_secs", 300, 10, 86_400)),
        nonce_secret: r
            .opt_string("phones.auth.nonce_secret")
            .filter(|s| !s.is_empty())
            .map(Secret::new),
        request_log_size: r.int("phones.request_log_size", 50, 1, 10_000) as usize,
        max_upload_bytes: r.int("phones.max_upload_bytes", 65_536, 0, 16 << 20) as usize,
        hot_set_bytes: (r.int("phones.hot_set_mb", 256, 0, 1 << 20) as usize) << 20,
        trusted_proxies,
        write_wait: r.millis("phones.write_wait_ms", 3_000, 0, 60_000),
    }
}

fn read_acls(r: &mut Reader<'_>) -> AclsConfig {
    let servers = r.opt_string("acls.dns_servers").unwrap_or_default();
    let mut dns_servers = Vec::new();
    for part in servers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<SocketAddr>() {
            Ok(addr) => dns_servers.push(addr),
            Err(_) => r.error(
                "acls.dns_servers",
                format!("{part:?} is not an ip:port address (IPv6: [addr]:port)"),
            ),
        }
    }
    AclsConfig {
        dns_timeout: r.millis("acls.dns_timeout_ms", 500, 10, 30_000),
        dns_concurrency: r.int("acls.dns_concurrency", 32, 1, 1_024) as usize,
        dns_servers,
        dns_min_ttl: Duration::from_secs(r.int("acls.dns_min_ttl_secs", 5, 1, 86_400)),
        dns_max_ttl: Duration::from_secs(r.int("acls.dns_max_ttl_secs", 3_600, 1, 604_800)),
    }
}

fn read_couchdb(r: &mut Reader<'_>) -> CouchConfig {
    let text = r.string("couchdb.url", "http://127.0.0.1:5984");
    let username = r.opt_string("couchdb.username").filter(|s| !s.is_empty());
    let password = r.opt_string("couchdb.password").filter(|s| !s.is_empty());
    let request_timeout = r.millis("couchdb.request_timeout_ms", 30_000, 100, 600_000);
    let connect_timeout = r.millis("couchdb.connect_timeout_ms", 5_000, 100, 120_000);
    let fallback = Url::parse("http://127.0.0.1:5984/").expect("fallback URL parses");
    let (url, url_credentials) = match split_credentials(&text) {
        Ok(parts) => parts,
        Err(message) => {
            r.error("couchdb.url", message);
            (fallback, None)
        }
    };
    let credentials = match (username, password, url_credentials) {
        (None, None, from_url) => from_url,
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            r.error(
                "couchdb.username",
                "credentials are given both in couchdb.url and as couchdb.username/password",
            );
            None
        }
        (Some(username), Some(password), None) => Some(Credentials {
            username,
            password: Secret::new(password),
        }),
        (Some(_), None, None) => {
            r.error(
                "couchdb.password",
                "couchdb.username is set but couchdb.password is not",
            );
            None
        }
        (None, Some(_), None) => {
            r.error(
                "couchdb.username",
                "couchdb.password is set but couchdb.username is not",
            );
            None
        }
    };
    CouchConfig {
        url,
        credentials,
        request_timeout,
        connect_timeout,
    }
}

/// Splits `http://user:pass@host:5984/prefix` into a credential-free base URL
/// (always ending in `/`) and the credentials.
fn split_credentials(text: &str) -> Result<(Url, Option<Credentials>), String> {
    let mut url = Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_string());
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = (!url.username().is_empty()).then(|| Credentials {
        username: decode(url.username()),
        password: Secret::new(decode(url.password().unwrap_or(""))),
    });
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok((url, credentials))
}

fn read_databases(r: &mut Reader<'_>) -> Databases {
    let mut name = |key: &str, default: &str| r.string(&format!("databases.{key}"), default);
    Databases {
        system_config: name("system_config", "system_config"),
        sip_auth: name("sip_auth", "sip_auth"),
        offnet: name("offnet", "offnet"),
        units: name("units", "units"),
        provisioning: name("provisioning", "provisioning"),
        edge_config: name("edge_config", "edge_config"),
        edge_registry: name("edge_registry", "edge_registry"),
        edge_telemetry: name("edge_telemetry", "edge_telemetry"),
        cache: name("cache", "caldera_cache"),
    }
}

fn read_feeds(r: &mut Reader<'_>) -> FeedConfig {
    let mode = match r.choice("feeds.mode", "continuous", &["continuous", "longpoll"]) {
        "longpoll" => FeedMode::Longpoll,
        _ => FeedMode::Continuous,
    };
    let heartbeat = r.millis("feeds.heartbeat_ms", 30_000, 100, 60_000);
    let factor = r.int("feeds.inactivity_heartbeats", 3, 2, 20) as u32;
    FeedConfig {
        mode,
        heartbeat,
        inactivity_timeout: heartbeat * factor,
        rotate_after: Duration::from_secs(r.int("feeds.rotate_secs", 300, 1, 86_400)),
        backoff_initial: r.millis("feeds.backoff_initial_ms", 250, 10, 60_000),
        backoff_max: r.millis("feeds.backoff_max_ms", 30_000, 100, 3_600_000),
        missing_db_poll: r.millis("feeds.missing_db_poll_ms", 5_000, 50, 600_000),
        load_page_size: r.int("feeds.load_page_size", 1_000, 10, 100_000),
        checkpoint_interval: r.millis("feeds.checkpoint_interval_ms", 1_000, 10, 600_000),
    }
}

fn read_build(r: &mut Reader<'_>) -> BuildConfig {
    let workers = r.int("build.workers", 0, 0, 256) as usize;
    BuildConfig {
        enabled: r.bool("build.enabled", true),
        debounce: r.millis("build.debounce_ms", 2, 0, 10_000),
        max_batch: r.int("build.max_batch", 10_000, 1, 10_000_000) as usize,
        workers: if workers == 0 {
            default_workers()
        } else {
            workers
        },
        write_batch: r.int("build.write_batch", 500, 1, 10_000) as usize,
        max_output_bytes: r.int("build.max_output_bytes", 4_000_000, 1_024, 64_000_000) as usize,
    }
}

fn read_http(r: &mut Reader<'_>) -> HttpConfig {
    HttpConfig {
        phones_listen: r.socket_addr("http.phones.listen", "0.0.0.0:8080"),
        api_listen: r.socket_addr("http.api.listen", "127.0.0.1:8081"),
        admin_token: r
            .opt_string("http.api.admin_token")
            .filter(|t| !t.is_empty())
            .map(Secret::new),
        request_timeout: r.millis("http.request_timeout_ms", 10_000, 100, 600_000),
        max_body_bytes: r.int("http.max_body_bytes", 1 << 20, 1_024, 1 << 30) as usize,
        max_header_bytes: r.int("http.max_header_bytes", 16_384, 8_192, 1 << 20) as usize,
        max_headers: r.int("http.max_headers", 64, 8, 1_000) as usize,
        header_read_timeout: r.millis("http.header_read_timeout_ms", 10_000, 100, 600_000),
    }
}

fn validate(config: &Config, errors: &mut Vec<ConfigError>) {
    let mut push = |key: &str, message: String| {
        errors.push(ConfigError {
            key: key.to_string(),
            message,
        });
    };
    if config.node.trim().is_empty() {
        push("node", "must not be empty".to_string());
    }
    if config.zone.trim().is_empty() {
        push("zone", "must not be empty".to_string());
    }
    let names = config.databases.all();
    for (key, name) in names {
        if let Err(message) = check_db_name(name) {
            push(&format!("databases.{key}"), message);
        }
    }
    for (i, (key, name)) in names.iter().enumerate() {
        if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
            push(
                &format!("databases.{key}"),
                format!("{name:?} is already used by databases.{other}"),
            );
        }
    }
    if config.feeds.backoff_initial > config.feeds.backoff_max {
        push(
            "feeds.backoff_initial_ms",
            "is larger than feeds.backoff_max_ms".to_string(),
        );
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        push(
            "log.level",
            format!("{:?} is not a log filter: {err}", config.log.level),
        );
    }
    if config.acls.dns_min_ttl > config.acls.dns_max_ttl {
        push(
            "acls.dns_min_ttl_secs",
            "is larger than acls.dns_max_ttl_secs".to_string(),
        );
    }
    if let Some(path) = &config.phones.trusted_pairs_file
        && (path.file_name().is_none() || path.as_os_str().to_string_lossy().ends_with('/'))
    {
        push(
            "phones.trusted_pairs_file",
            format!("{} names no file", path.display()),
        );
    }
    if config.http.phones_listen == config.http.api_listen && config.http.api_listen.port() != 0 {
        push(
            "http.api.listen",
            "is the same address as http.phones.listen".to_string(),
        );
    }
}

/// CouchDB's rule for database names.
pub fn check_db_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$()+-/".contains(c));
    if first_ok && rest_ok && name.len() <= 238 {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a CouchDB database name (a lower-case letter, then a-z 0-9 _ $ ( ) + - /)"
        ))
    }
}

fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("caldera@{host}")
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `CALDERA_*` variables that match no key: most likely typos.
fn unknown_env_vars(names: impl Iterator<Item = String>) -> Vec<String> {
    // Build the list of valid names by reading an empty file through a reader
    // that records which variables were asked for.
    let asked = std::cell::RefCell::new(Vec::new());
    let record = |name: &str| {
        asked.borrow_mut().push(name.to_string());
        None
    };
    let _ = Config::from_toml("", &record);
    let asked = asked.into_inner();
    const NOT_KEYS: [&str; 3] = ["CALDERA_CONFIG", "CALDERA_SKIP_AMQP", "CALDERA_TEST_SEED"];
    names
        .filter(|n| {
            n.starts_with("CALDERA_") && !asked.contains(n) && !NOT_KEYS.contains(&n.as_str())
        })
        .map(|n| format!("environment variable {n} matches no configuration key; ignored"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_toml("", &no_env).unwrap();
        assert_eq!(config.databases.cache, "caldera_cache");
        assert_eq!(config.http.api_listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(config.feeds.inactivity_timeout, Duration::from_secs(90));
    }

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        let config = Config::from_toml(
            "[couchdb]\nurl = \"http://ad%40min:s3cr%3At@db.example:5984/couch\"",
            &no_env,
        )
        .unwrap();
        assert_eq!(config.couchdb.url.as_str(), "http://db.example:5984/couch/");
        let credentials = config.couchdb.credentials.unwrap();
        assert_eq!(credentials.username, "ad@min");
        assert_eq!(credentials.password.expose(), "s3cr:t");
        assert_eq!(format!("{:?}", credentials.password), "\"***\"");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            node = ""
            [couchdb]
            url = "ftp://x"
            [databases]
            cache = "system_config"
            units = "Bad Name"
            [http.api]
            listen = "nowhere"
            [feeds]
            heartbeat_ms = 5
            colour = "blue"
            [log]
            format = "xml"
        "#;
        let Err(LoadError::Invalid(errors)) = Config::from_toml(text, &no_env) else {
            panic!("expected errors");
        };
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "node",
            "couchdb.url",
            "databases.cache",
            "databases.units",
            "http.api.listen",
            "feeds.heartbeat_ms",
            "feeds.colour",
            "log.format",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn restart_is_needed_only_for_structural_keys() {
        let old = Config::from_toml("", &no_env).unwrap();
        let new = Config::from_toml(
            "[log]\nlevel = \"debug\"\n[http.api]\nlisten = \"127.0.0.1:9999\"\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(old.needs_restart(&new), ["http.api.listen"]);
    }

    #[test]
    fn acls_dns_settings_are_read_and_checked() {
        let config = Config::from_toml("", &no_env).unwrap();
        assert_eq!(config.acls.dns_timeout, Duration::from_millis(500));
        assert!(config.acls.dns_servers.is_empty());
        let config = Config::from_toml(
            "[acls]\ndns_servers = \"127.0.0.1:5353, [::1]:53\"\ndns_timeout_ms = 200\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(
            config.acls.dns_servers,
            [
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(config.acls.dns_timeout, Duration::from_millis(200));
        let env = |name: &str| (name == "CALDERA_ACLS_DNS_CONCURRENCY").then(|| "0".to_string());
        let text = "[acls]\ndns_servers = \"resolver.example:53\"\ndns_min_ttl_secs = 100\ndns_max_ttl_secs = 10\nttl = 3\n";
        let Err(LoadError::Invalid(errors)) = Config::from_toml(text, &env) else {
            panic!("expected errors");
        };
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "acls.dns_servers",
            "acls.dns_min_ttl_secs",
            "acls.dns_concurrency",
            "acls.ttl",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn phones_settings_are_read_and_checked() {
        let config = Config::from_toml("", &no_env).unwrap();
        assert_eq!(config.phones.rate_limit_misses, 20);
        assert_eq!(config.phones.nonce_secret, None);
        let config = Config::from_toml(
            "[phones]\ntrusted_proxies = \"10.0.0.0/8, 192.0.2.1\"\n[phones.rate_limit]\nmisses = 0\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(config.phones.trusted_proxies.len(), 2);
        assert_eq!(config.phones.rate_limit_misses, 0);
        assert_eq!(
            config.phones.trusted_pair_ttl,
            Duration::from_secs(3 * 86_400)
        );
        assert_eq!(config.phones.trusted_pairs_max, 100_000);
        assert_eq!(config.phones.trusted_pairs_file, None);
        let text = "[phones]\ntrusted_proxies = \"nope\"\nrequest_log_size = 0\ntrusted_pair_ttl_secs = 5\ntrusted_pairs_max = -1\ntrusted_pairs_file = \"/var/lib/caldera/\"\ntrusted_pairs_save_secs = 0\n[phones.auth]\nnonce_ttl_secs = 1\n";
        let Err(LoadError::Invalid(errors)) = Config::from_toml(text, &no_env) else {
            panic!("expected errors");
        };
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "phones.trusted_proxies",
            "phones.request_log_size",
            "phones.auth.nonce_ttl_secs",
            "phones.trusted_pair_ttl_secs",
            "phones.trusted_pairs_max",
            "phones.trusted_pairs_file",
            "phones.trusted_pairs_save_secs",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_environment_variables_are_flagged() {
        let names = [
            "CALDERA_COUCHDB_URL",
            "CALDERA_COUCHDB_ULR",
            "PATH",
            "CALDERA_CONFIG",
        ];
        let warnings = unknown_env_vars(names.iter().map(|s| s.to_string()));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("CALDERA_COUCHDB_ULR"));
    }
}

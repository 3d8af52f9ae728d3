//! The daemon under test: the real `caldera` binary, spawned with a
//! temporary config file, its JSON logs collected in the background (and
//! printed when a test fails), its listeners found from its
//! `"listening"` log lines.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::couch::DbNames;

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_caldera")
}

/// What a path segment keeps unescaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `/v1/sysconf/<category>/<k1>/<k2>...`, every segment percent-encoded (so
/// a `/` inside a key stays inside its segment).
pub fn sysconf_path(category: &str, key: &[&str]) -> String {
    let mut path = format!("/v1/sysconf/{}", utf8_percent_encode(category, SEGMENT));
    for segment in key {
        path.push('/');
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    path
}

/// Percent-encodes a query value.
pub fn query_value(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// A fresh path for the mirror's on-disk store (in a directory kept for
/// the test process: a restarted daemon with the same configuration finds
/// its store again; clones of one configuration share it, and the second
/// daemon to open it runs without one, as in production).
fn store_path() -> String {
    let dir = tempfile::Builder::new()
        .prefix("caldera-store-")
        .tempdir()
        .expect("a temp dir for the store")
        .keep();
    dir.join("cache.redb").display().to_string()
}

/// A daemon configuration: fast test timings, loopback listeners on free
/// ports, JSON logs, unique database names; tests override single keys.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    table: toml::Table,
    /// Put `--config PATH` before the subcommand instead of after it.
    pub option_first: bool,
    /// A name for log output.
    pub label: String,
    /// Extra environment variables for the daemon (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// A command the daemon runs under (`prlimit --fsize=N --`), if any.
    pub wrapper: Vec<String>,
}

impl DaemonConfig {
    pub fn new(couch_url: &str, names: &DbNames, node: &str) -> DaemonConfig {
        let mut config = DaemonConfig {
            table: toml::Table::new(),
            option_first: false,
            label: node.to_string(),
            env: Vec::new(),
            wrapper: Vec::new(),
        };
        config
            .set("node", node)
            .set("zone", "test_zone")
            .set("couchdb.url", couch_url)
            .set("http.api.listen", "127.0.0.1:0")
            .set("http.phones.listen", "127.0.0.1:0")
            .set("log.format", "json")
            .set("log.level", "info,caldera=debug")
            .set("feeds.heartbeat_ms", 500)
            .set("feeds.missing_db_poll_ms", 200)
            .set("feeds.backoff_initial_ms", 50)
            .set("feeds.backoff_max_ms", 1000)
            .set("feeds.checkpoint_interval_ms", 50)
            .set("build.debounce_ms", 2)
            .set("shutdown.grace_ms", 5000)
            .set("cache.store_path", store_path());
        config.set_databases(names);
        config
    }

    /// Points every `databases.*` key at `names`.
    pub fn set_databases(&mut self, names: &DbNames) -> &mut Self {
        for (key, name) in names.all() {
            self.set(&format!("databases.{key}"), name);
        }
        self
    }

    /// Sets a dotted key (`build.enabled`, `http.api.admin_token`).
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        let mut parts: Vec<&str> = key.split('.').collect();
        let leaf = parts.pop().expect("a key has at least one part");
        let mut table = &mut self.table;
        for part in parts {
            table = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} in {key} is not a table"));
        }
        table.insert(leaf.to_string(), value.into());
        self
    }

    /// The value of a dotted key, if set.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        let mut parts = key.split('.');
        let mut current = self.table.get(parts.next()?)?;
        for part in parts {
            current = current.as_table()?.get(part)?;
        }
        Some(current)
    }

    pub fn node(&self) -> String {
        self.get("node")
            .and_then(toml::Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    pub fn zone(&self) -> String {
        self.get("zone")
            .and_then(toml::Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    pub fn toml(&self) -> String {
        toml::to_string(&self.table).expect("the config serializes")
    }
}

/// Every line the daemon printed, in order.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
}

impl Logs {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn collect<R: Read + Send + 'static>(stream: R, logs: Arc<Logs>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    logs.push(text.trim_end().to_string());
                }
            }
        }
    });
}

/// An answer from the daemon's HTTP listeners.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A running (or stopped) daemon.
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    pub api: SocketAddr,
    pub phones: SocketAddr,
    logs: Arc<Logs>,
    pub config: DaemonConfig,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Spawns `caldera run` and waits until both listeners are bound.
    pub async fn start(config: &DaemonConfig) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("caldera-test-")
            .tempdir()
            .expect("a temp dir for the config");
        let config_path = dir.path().join("caldera.toml");
        std::fs::write(&config_path, config.toml()).expect("write the config");
        let mut command = match config.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        if config.option_first {
            command.arg("--config").arg(&config_path).arg("run");
        } else {
            command.arg("run").arg("--config").arg(&config_path);
        }
        scrub_env(&mut command);
        command.envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the caldera binary");
        let logs = Arc::new(Logs::default());
        collect(child.stdout.take().expect("piped stdout"), logs.clone());
        collect(child.stderr.take().expect("piped stderr"), logs.clone());
        let pid = child.id();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            // Below the shortest `http.header_read_timeout_ms` a test sets
            // (500 ms): the daemon hangs up on a keep-alive connection idle
            // that long, and reusing one it is closing fails the request.
            .pool_idle_timeout(Duration::from_millis(250))
            .build()
            .expect("build the test HTTP client");
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            api: "0.0.0.0:0".parse().expect("an address"),
            phones: "0.0.0.0:0".parse().expect("an address"),
            logs,
            config: config.clone(),
            config_path,
            _dir: dir,
            http,
            exit: None,
        };
        let started = Instant::now();
        loop {
            let (api, phones) = daemon.listeners();
            if let (Some(api), Some(phones)) = (api, phones) {
                daemon.api = api;
                daemon.phones = phones;
                return daemon;
            }
            if let Some(status) = daemon.try_exit() {
                panic!(
                    "[{}] the daemon exited during start-up ({status}):\n{}",
                    daemon.config.label,
                    daemon.log_tail(100)
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!(
                    "[{}] the daemon did not log its listeners within 30 s:\n{}",
                    daemon.config.label,
                    daemon.log_tail(100)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a daemon and waits until `/readyz` answers 200.
    pub async fn start_ready(config: &DaemonConfig) -> Daemon {
        let daemon = Daemon::start(config).await;
        daemon.wait_ready().await;
        daemon
    }

    fn listeners(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let mut api = None;
        let mut phones = None;
        for line in self.logs.snapshot() {
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if json["message"] != "listening" {
                continue;
            }
            let addr = json["addr"].as_str().and_then(|a| a.parse().ok());
            match json["listener"].as_str() {
                Some("api") => api = addr,
                Some("phones") => phones = addr,
                _ => {}
            }
        }
        (api, phones)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.snapshot()
    }

    /// The last `n` log lines, one per line.
    pub fn log_tail(&self, n: usize) -> String {
        let lines = self.logs.snapshot();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.snapshot().iter().any(|l| l.contains(needle))
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.exit = Some(status);
        Some(status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Polls `/readyz` until 200 (60 s at most).
    pub async fn wait_ready(&self) {
        self.wait_ready_within(Duration::from_secs(60)).await;
    }

    pub async fn wait_ready_within(&self, timeout: Duration) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match self.try_get("/readyz").await {
                Ok(reply) if reply.status == StatusCode::OK => return,
                Ok(reply) => last = format!("{} {}", reply.status, reply.text),
                Err(err) => last = err,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "[{}] /readyz did not answer 200 within {timeout:?}; last answer: {last}\nlog tail:\n{}",
            self.config.label,
            self.log_tail(60)
        );
    }

    /// The status `/readyz` answers now.
    pub async fn readyz(&self) -> Result<StatusCode, String> {
        self.try_get("/readyz").await.map(|r| r.status)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(self.pid, "-TERM");
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        signal(self.pid, "-HUP");
    }

    /// Waits for the process to exit, killing it (and failing) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if started.elapsed() > timeout {
                self.kill9();
                panic!(
                    "[{}] the daemon did not exit within {timeout:?}:\n{}",
                    self.config.label,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut()
            && self.exit.is_none()
        {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn phones_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.phones)
    }

    /// The reusable HTTP client (tests may add headers per request).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request to a full URL; transport errors are `Err`.
    pub async fn try_send(&self, request: reqwest::RequestBuilder) -> Result<Reply, String> {
        let response = request.send().await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| format!("{e:?}"))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            text,
            json,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Reply {
        self.try_send(request).await.unwrap_or_else(|e| {
            panic!(
                "[{}] {what}: {e}\nlog tail:\n{}",
                self.config.label,
                self.log_tail(40)
            )
        })
    }

    /// `GET` on the api listener; transport errors are `Err`.
    pub async fn try_get(&self, path: &str) -> Result<Reply, String> {
        self.try_send(self.http.get(self.api_url(path))).await
    }

    /// `GET` on the api listener.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.api_url(path)), &format!("GET {path}"))
            .await
    }

    /// A request with a JSON body on the api listener.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Reply {
        let request = self
            .http
            .request(method.clone(), self.api_url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("JSON serializes"));
        self.send(request, &format!("{method} {path}")).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::PUT, path, body).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::POST, path, body).await
    }

    /// A request with a raw body (or none) on the api listener.
    pub async fn send_raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
        let mut request = self.http.request(method.clone(), self.api_url(path));
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        self.send(request, &format!("{method} {path}")).await
    }

    /// `GET` on the phones listener.
    pub async fn get_phones(&self, path: &str) -> Reply {
        self.send(
            self.http.get(self.phones_url(path)),
            &format!("GET phones {path}"),
        )
        .await
    }

    /// Sysconf get: `GET /v1/sysconf/<category>/<key...>[?node=]`.
    pub async fn sysconf_get(&self, category: &str, key: &[&str], node: Option<&str>) -> Reply {
        let mut path = sysconf_path(category, key);
        if let Some(node) = node {
            path.push_str("?node=");
            path.push_str(&query_value(node));
        }
        self.get(&path).await
    }

    /// Sysconf set: `PUT /v1/sysconf/<category>/<key...>` with `body`.
    pub async fn sysconf_put(&self, category: &str, key: &[&str], body: &Value) -> Reply {
        self.put(&sysconf_path(category, key), body).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- [{}] caldera log (last 300 lines) -----\n{}\n----- end of [{}] log -----",
                self.config.label,
                self.log_tail(300),
                self.config.label
            );
        }
        self.kill9();
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid} failed");
}

/// Removes `CALDERA_*` variables (they override config keys) from a child's
/// environment.
pub fn scrub_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CALDERA_") {
            command.env_remove(name);
        }
    }
}

/// Runs `caldera <args>` to completion: (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    run_cli_env(args, &[])
}

/// Runs `caldera <args>` with extra environment variables.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary());
    command.args(args);
    scrub_env(&mut command);
    command.envs(env.iter().copied());
    let output = command.output().expect("run the caldera binary");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

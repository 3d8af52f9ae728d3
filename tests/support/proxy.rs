//! A tiny TCP fault proxy between the daemon and CouchDB: it forwards bytes
//! both ways until `cut()`, which closes every open connection and refuses
//! new ones (accepted, then dropped at once) until `restore()`. This is how
//! an outage is simulated against a server the tests cannot stop.
//!
//! `stall()` is the nastier fault: every open connection, and every one
//! accepted until `restore()`, stays open but goes silent for good (no byte
//! either way, no close) — a half-dead server or a dropped route, which only
//! a client-side deadline notices.
//!
//! `refuse_requests_containing(text)` is the finest fault: a connection whose
//! request bytes contain `text` (say `POST /db_cache/_bulk_docs`) is closed
//! before that request reaches the server, every other request passes —
//! one kind of call failing while the rest of CouchDB works.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::Url;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct State {
    cut: AtomicBool,
    stalled: AtomicBool,
    /// Silent connections, kept open (see `stall`).
    graveyard: Mutex<Vec<TcpStream>>,
    /// Requests containing these bytes are refused (see
    /// `refuse_requests_containing`).
    refused_pattern: Mutex<Option<Vec<u8>>>,
    /// Bumped by `cut()`: every connection opened before ends.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// Copies both ways until either side closes, or until a request carries
/// the refused pattern (then both connections are dropped).
async fn forward(client: &mut TcpStream, upstream: &mut TcpStream, state: &State) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let requests = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if state.refuses(&buffer[..n]) {
                state.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if upstream_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    let answers = tokio::io::copy(&mut upstream_read, &mut client_write);
    tokio::select! {
        () = requests => {}
        _ = answers => {}
    }
}

impl State {
    fn refuses(&self, bytes: &[u8]) -> bool {
        let pattern = self
            .refused_pattern
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pattern
            .as_deref()
            .is_some_and(|p| bytes.windows(p.len()).any(|w| w == p))
    }

    fn bury(&self, stream: TcpStream) {
        self.graveyard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stream);
    }
}

pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            graveyard: Mutex::default(),
            refused_pattern: Mutex::default(),
            generation: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut generation = shared.generation.subscribe();
                if shared.cut.load(Ordering::SeqCst) {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                if shared.stalled.load(Ordering::SeqCst) {
                    shared.bury(client);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = forward(&mut client, &mut upstream, &state) => {}
                        _ = generation.changed() => {
                            if state.stalled.load(Ordering::SeqCst) {
                                state.bury(client);
                                state.bury(upstream);
                            }
                        }
                    }
                });
            }
        });
        FaultProxy {
            addr,
            target,
            state,
            accept,
        }
    }

    /// A proxy in front of the server at `url` (host and port taken from it).
    pub async fn in_front_of(url: &str) -> FaultProxy {
        let parsed = Url::parse(url).expect("a server URL");
        let host = parsed.host_str().expect("the URL has a host");
        let port = parsed.port_or_known_default().expect("the URL has a port");
        let target = (host, port)
            .to_socket_addrs()
            .expect("resolve the server")
            .next()
            .expect("the server has an address");
        FaultProxy::start(target).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `url` (credentials and path kept) with its host and port replaced by
    /// the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = Url::parse(url).expect("a server URL");
        parsed
            .set_host(Some(&self.addr.ip().to_string()))
            .expect("set the host");
        parsed
            .set_port(Some(self.addr.port()))
            .expect("set the port");
        parsed.as_str().trim_end_matches('/').to_string()
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Silences every connection for good, and every new one until
    /// `restore()`, without closing any.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again (new connections; stalled ones stay silent), every
    /// request included.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.stalled.store(false, Ordering::SeqCst);
        *self
            .state
            .refused_pattern
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Closes any connection as soon as a request on it contains `text`
    /// (before that request reaches the server), until `restore()`.
    pub fn refuse_requests_containing(&self, text: &str) {
        *self
            .state
            .refused_pattern
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(text.as_bytes().to_vec());
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused while cut.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.generation.send_modify(|g| *g += 1);
    }
}

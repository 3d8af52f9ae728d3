//! Live `_changes` feeds with client-side deadlines: one for the response
//! headers and one per read. Servers may ignore `timeout`, keep dead feeds
//! open, or cut a stream mid-way; every such case ends in an `Err` the
//! follower treats as "reconnect from the last processed sequence".

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::Method;

use super::rows::{self, Line, Page};
use super::{Client, Db, Error, ErrorKind, Result, Seq};

/// A single line (one change with its document) may not exceed this.
const MAX_LINE_BYTES: usize = 64 << 20;

/// Client-side deadlines of a feed request.
#[derive(Debug, Clone, Copy)]
pub struct FeedTimeouts {
    /// For the response headers (pouchdb-server holds them back until the
    /// first heartbeat, so this must exceed the heartbeat).
    pub headers: Duration,
    /// No byte at all for this long means the connection is dead.
    pub inactivity: Duration,
}

type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Whether a consumer already holds a document revision `(id, rev)`.
pub type Known = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// An open `feed=continuous` response, read line by line.
pub struct ChangesStream {
    known: Option<Known>,
    client: Client,
    body: BodyStream,
    buffer: Vec<u8>,
    inactivity: Duration,
    operation: String,
}

impl Db {
    /// Opens `_changes?feed=continuous&include_docs=true&heartbeat=…&since=…`.
    ///
    /// # Errors
    /// The headers did not arrive in time, or the server answered an error.
    pub async fn follow(
        &self,
        since: &Seq,
        heartbeat: Duration,
        timeouts: FeedTimeouts,
    ) -> Result<ChangesStream> {
        let url = self.feed_url(since, "continuous", heartbeat, None);
        let operation = self.op(&Method::GET, "_changes");
        let body = self.open_feed(url, &operation, timeouts).await?;
        Ok(ChangesStream {
            known: None,
            client: self.client.clone(),
            body,
            buffer: Vec::new(),
            inactivity: timeouts.inactivity,
            operation,
        })
    }

    /// One `_changes?feed=longpoll` round: waits for changes after `since`
    /// (the server may wait forever: `timeouts.inactivity` and `deadline`
    /// bound it) and returns them as a page.
    ///
    /// # Errors
    /// A deadline passed, the body was cut, or the answer is not a page.
    pub async fn longpoll(
        &self,
        since: &Seq,
        heartbeat: Duration,
        limit: u64,
        timeouts: FeedTimeouts,
        deadline: Duration,
    ) -> Result<Page> {
        let url = self.feed_url(since, "longpoll", heartbeat, Some(limit));
        let operation = self.op(&Method::GET, "_changes");
        let read = async {
            let mut body = self.open_feed(url, &operation, timeouts).await?;
            let mut buffer = Vec::new();
            while let Some(chunk) =
                next_chunk(&self.client, &mut body, timeouts.inactivity, &operation).await?
            {
                buffer.extend_from_slice(&chunk);
                if buffer.len() > MAX_LINE_BYTES {
                    return Err(Error::new(
                        ErrorKind::Fatal,
                        operation.clone(),
                        "the longpoll answer is too large",
                    ));
                }
            }
            rows::parse_page(&buffer)
                .map_err(|why| Error::new(ErrorKind::Transient, operation.clone(), why))
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Transient,
                operation.clone(),
                "the longpoll round reached its deadline",
            )),
        }
    }

    async fn open_feed(
        &self,
        url: reqwest::Url,
        operation: &str,
        timeouts: FeedTimeouts,
    ) -> Result<BodyStream> {
        let request = self.client.request(Method::GET, url, true).send();
        let response = match tokio::time::timeout(timeouts.headers, request).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(Error::transport(operation.to_string(), &err)),
            Err(_) => {
                self.client.stalled();
                let why = format!("no response headers within {:?}", timeouts.headers);
                return Err(Error::new(ErrorKind::Transient, operation, why));
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = tokio::time::timeout(timeouts.inactivity, response.bytes()).await;
            let body = body.ok().and_then(|r| r.ok()).unwrap_or_default();
            return Err(Error::from_response(operation.to_string(), status, &body));
        }
        Ok(Box::pin(response.bytes_stream()))
    }
}

impl ChangesStream {
    /// Rows whose `(id, rev)` `known` says the consumer holds come as
    /// `Line::Known`, their documents never parsed: the cache database's
    /// feed echoes every document this instance just wrote, and parsing
    /// those (routing tables of megabytes) only to drop them doubled the
    /// cost of a write.
    pub fn skip_known(mut self, known: Known) -> ChangesStream {
        self.known = Some(known);
        self
    }

    /// The next row or end-of-feed line; `None` when the server closed the
    /// stream cleanly. Heartbeat lines are consumed silently.
    ///
    /// # Errors
    /// Inactivity deadline, a cut connection, or a line that is not a change.
    pub async fn next_line(&mut self) -> Result<Option<Line>> {
        loop {
            if let Some(newline) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return self.parse(line).map(Some);
            }
            match next_chunk(
                &self.client,
                &mut self.body,
                self.inactivity,
                &self.operation,
            )
            .await?
            {
                Some(chunk) => {
                    self.buffer.extend_from_slice(&chunk);
                    if self.buffer.len() > MAX_LINE_BYTES {
                        let why = format!("a feed line is longer than {MAX_LINE_BYTES} bytes");
                        return Err(Error::new(ErrorKind::Fatal, self.operation.clone(), why));
                    }
                }
                None => {
                    let rest = std::mem::take(&mut self.buffer);
                    let rest = rest.trim_ascii();
                    return if rest.is_empty() {
                        Ok(None)
                    } else {
                        self.parse(rest).map(Some)
                    };
                }
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<Line> {
        if let Some(known) = &self.known
            && let Some((seq, id, rev)) = rows::peek(line)
            && known(&id, &rev)
        {
            return Ok(Line::Known { seq });
        }
        rows::parse_line(line)
            .map_err(|why| Error::new(ErrorKind::Transient, self.operation.clone(), why))
    }
}

async fn next_chunk(
    client: &Client,
    body: &mut BodyStream,
    inactivity: Duration,
    operation: &str,
) -> Result<Option<Bytes>> {
    match tokio::time::timeout(inactivity, body.next()).await {
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(err))) => Err(Error::transport(operation.to_string(), &err)),
        Ok(None) => Ok(None),
        Err(_) => {
            client.stalled();
            let why = format!("no data for {inactivity:?} (heartbeats stopped)");
            Err(Error::new(ErrorKind::Transient, operation, why))
        }
    }
}

//! Telemetry (pure; the caller passes times): who reported (the client
//! address behind trusted proxies), whether the proxy edge may proxy, the
//! per-edge summary a report folds into, and the seed's report shapes.
//!
//! * Client address: `X-Forwarded-For` counts only when the socket peer is
//!   a trusted proxy; then the client is the right-most hop that is not a
//!   trusted proxy. Without the header the peer is the client.
//! * A summary keeps one record per (package name, set version): download
//!   and consumption status, each with the time of its last success. The
//!   latest report of an edge is its highest numeric set version (ties: the
//!   later report); `"0.00"` never counts as latest. Late or repeated
//!   reports are folded like any other, never refused.

use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::model::{EdgeRecord, parse_set_version};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    Download,
    Consumption,
}

impl ReportKind {
    /// The seed's `description` of the answer.
    pub fn description(self, success: bool) -> &'static str {
        match (self, success) {
            (ReportKind::Download, true) => "Package Download Successful",
            (ReportKind::Download, false) => "Package Download Failed",
            (ReportKind::Consumption, true) => "Package Consumption Successful",
            (ReportKind::Consumption, false) => "Package Consumption Failed",
        }
    }
}

/// What to do about a proxy edge that may not proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyPolicy {
    /// No check.
    Off,
    /// Accept, record the finding.
    Log,
    /// Refuse the report.
    Enforce,
}

/// The proxy check's finding, stored with the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyCheck {
    Skipped,
    Ok,
    Unknown,
    BadType(String),
}

impl ProxyCheck {
    pub fn name(&self) -> &'static str {
        match self {
            ProxyCheck::Skipped => "skipped",
            ProxyCheck::Ok => "ok",
            ProxyCheck::Unknown => "unknown",
            ProxyCheck::BadType(_) => "bad_type",
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self, ProxyCheck::Skipped | ProxyCheck::Ok)
    }
}

/// Checks the proxy edge against the registry: it must exist and be of an
/// allowed edge type (`static`, `mid` by default).
pub fn check_proxy(
    policy: ProxyPolicy,
    proxy: Option<&EdgeRecord>,
    allowed_types: &[String],
) -> ProxyCheck {
    if policy == ProxyPolicy::Off {
        return ProxyCheck::Skipped;
    }
    match proxy {
        None => ProxyCheck::Unknown,
        Some(edge) if allowed_types.contains(&edge.edge_type) => ProxyCheck::Ok,
        Some(edge) => ProxyCheck::BadType(edge.edge_type.clone()),
    }
}

/// The reporting client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress {
    pub ip: IpAddr,
    /// The raw `X-Forwarded-For` chain, when sent.
    pub forwarded_for: Option<String>,
    /// The header was sent by a peer that is not a trusted proxy (ignored).
    pub untrusted_header: bool,
}

/// The client behind `peer`, given the `X-Forwarded-For` header values.
pub fn client_address(peer: IpAddr, forwarded: &[&str], trusted: &[IpNet]) -> ClientAddress {
    let raw = (!forwarded.is_empty()).then(|| forwarded.join(", "));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if raw.is_none() || !is_trusted(&peer) {
        return ClientAddress {
            ip: peer,
            untrusted_header: raw.is_some(),
            forwarded_for: raw,
        };
    }
    let hops: Vec<&str> = forwarded
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A hop that is not an address ends the trusted chain: the last
        // address we could read is the best we know.
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    ClientAddress {
        ip: client,
        forwarded_for: raw,
        untrusted_header: false,
    }
}

/// An `X-Forwarded-For` hop: an address, maybe with a port or brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// One report, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: ReportKind,
    pub success: bool,
    pub edge_id: String,
    pub proxy_edge_id: String,
    pub package_name: String,
    pub template_set_version: String,
    pub ip_address: String,
    /// RFC 3339.
    pub received_at: String,
}

/// One status of one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub success: bool,
    /// RFC 3339 time of the report that made it a success.
    pub at: Option<String>,
    /// RFC 3339 time of the last report of this status (success or not).
    #[serde(default)]
    pub reported_at: Option<String>,
}

/// What an edge reported about one (package name, set version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReport {
    pub package_name: String,
    pub template_set_version: String,
    /// The set version in hundredths, when it is a number.
    pub set_seq: Option<u64>,
    pub downloaded: Status,
    pub consumed: Status,
    pub ip_address: String,
    pub proxy_edge_id: String,
    pub last_reported_at: String,
}

/// Everything an edge reported, folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub edge_id: String,
    pub first_reported_at: String,
    pub last_reported_at: String,
    pub versions: Vec<VersionReport>,
}

fn instant(text: &str) -> Timestamp {
    text.parse().unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Summary {
    pub fn new(event: &Event) -> Summary {
        Summary {
            edge_id: event.edge_id.clone(),
            first_reported_at: event.received_at.clone(),
            last_reported_at: event.received_at.clone(),
            versions: Vec::new(),
        }
    }

    /// Folds one report in, keeping at most `keep` versions (the
    /// least recently reported go first).
    pub fn fold(&mut self, event: &Event, keep: usize) {
        let at = instant(&event.received_at);
        if at < instant(&self.first_reported_at) {
            self.first_reported_at = event.received_at.clone();
        }
        if at > instant(&self.last_reported_at) {
            self.last_reported_at = event.received_at.clone();
        }
        let position = self.versions.iter().position(|v| {
            v.package_name == event.package_name
                && v.template_set_version == event.template_set_version
        });
        let record = match position {
            Some(i) => &mut self.versions[i],
            None => {
                self.versions.push(VersionReport {
                    package_name: event.package_name.clone(),
                    template_set_version: event.template_set_version.clone(),
                    set_seq: parse_set_version(&event.template_set_version).ok(),
                    downloaded: Status::default(),
                    consumed: Status::default(),
                    ip_address: String::new(),
                    proxy_edge_id: String::new(),
                    last_reported_at: event.received_at.clone(),
                });
                self.versions.last_mut().expect("just pushed")
            }
        };
        if at >= instant(&record.last_reported_at) || position.is_none() {
            record.last_reported_at = event.received_at.clone();
            record.ip_address = event.ip_address.clone();
            record.proxy_edge_id = event.proxy_edge_id.clone();
        }
        let status = match event.kind {
            ReportKind::Download => &mut record.downloaded,
            ReportKind::Consumption => &mut record.consumed,
        };
        // A report arriving late does not overwrite a newer one of the same status.
        if status
            .reported_at
            .as_deref()
            .is_none_or(|last| at >= instant(last))
        {
            *status = Status {
                success: event.success,
                at: event.success.then(|| event.received_at.clone()),
                reported_at: Some(event.received_at.clone()),
            };
        }
        if self.versions.len() > keep {
            self.versions
                .sort_by_key(|v| std::cmp::Reverse(instant(&v.last_reported_at)));
            self.versions.truncate(keep.max(1));
        }
    }

    /// The report that counts as the edge's latest.
    pub fn latest(&self) -> Option<&VersionReport> {
        self.versions
            .iter()
            .filter(|v| v.set_seq != Some(0))
            .max_by_key(|v| (v.set_seq, instant(&v.last_reported_at)))
    }

    /// Whether the edge counts in the report list.
    pub fn counted(&self) -> bool {
        self.latest().is_some()
    }
}

/// How report times are shown.
pub struct Display<'a> {
    pub tz: &'a TimeZone,
}

/// The list's time format, and the per-edge one (they differ in the original).
pub const LIST_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
pub const EDGE_FORMAT: &str = "%d-%m-%Y %H:%M:%S";

impl Display<'_> {
    pub fn time(&self, rfc3339: &str, format: &str) -> String {
        instant(rfc3339)
            .to_zoned(self.tz.clone())
            .strftime(format)
            .to_string()
    }

    fn optional(&self, at: Option<&String>, format: &str) -> Value {
        at.map_or(Value::Null, |t| json!(self.time(t, format)))
    }

    pub fn meta(&self, code: u16, now: Timestamp) -> Value {
        json!({
            "code": code,
            "timestamp": now.to_zoned(self.tz.clone()).strftime(LIST_FORMAT).to_string(),
        })
    }

    /// "Retrieve Edge info": every version, newest set version first.
    pub fn edge_report(&self, summary: Option<&Summary>) -> Value {
        let mut versions: Vec<&VersionReport> =
            summary.map_or_else(Vec::new, |s| s.versions.iter().collect());
        versions.sort_by_key(|v| std::cmp::Reverse((v.set_seq, instant(&v.last_reported_at))));
        let status = |s: &Status| {
            let mut json = json!({ "success": s.success });
            if let Some(at) = &s.at {
                json["date_time"] = json!(self.time(at, EDGE_FORMAT));
            }
            json
        };
        let data: Vec<Value> = versions
            .iter()
            .map(|v| {
                json!({
                    "edge_id": summary.map(|s| s.edge_id.as_str()),
                    "package_name": v.package_name,
                    "report": { "downloaded": status(&v.downloaded), "consumed": status(&v.consumed) },
                    "template_set_version": v.template_set_version,
                })
            })
            .collect();
        json!({ "data": data })
    }

    /// One flat entry of the info list / info report.
    pub fn info_entry(&self, summary: &Summary, format: &str) -> Option<Value> {
        let latest = summary.latest()?;
        Some(json!({
            "edge_id": summary.edge_id,
            "package_name": latest.package_name,
            "template_set_version": latest.template_set_version,
            "ip_address": latest.ip_address,
            "consumed": latest.consumed.success,
            "downloaded": latest.downloaded.success,
            "downloaded_time": self.optional(latest.downloaded.at.as_ref(), format),
            "consumed_time": self.optional(latest.consumed.at.as_ref(), format),
        }))
    }

    /// "Report info list": counted edges by first report time (ties: edge
    /// id), `page` 1-based; beyond the end the data is empty.
    pub fn info_list(
        &self,
        mut summaries: Vec<Summary>,
        page: usize,
        per_page: usize,
        now: Timestamp,
    ) -> Value {
        summaries.retain(Summary::counted);
        summaries.sort_by(|a, b| {
            (instant(&a.first_reported_at), &a.edge_id)
                .cmp(&(instant(&b.first_reported_at), &b.edge_id))
        });
        let total = summaries.len();
        let data: Vec<Value> = summaries
            .iter()
            .skip(page.saturating_sub(1).saturating_mul(per_page))
            .take(per_page)
            .filter_map(|s| self.info_entry(s, LIST_FORMAT))
            .collect();
        json!({
            "meta": self.meta(200, now),
            "data": data,
            "pagination": { "total": total, "page": page, "per_page": per_page },
        })
    }

    /// "Info report": one edge's latest; `meta.code` 204 and `data: {}`
    /// when it has none.
    pub fn info_report(&self, summary: Option<&Summary>, now: Timestamp) -> Value {
        match summary.and_then(|s| self.info_entry(s, EDGE_FORMAT)) {
            Some(data) => json!({ "meta": self.meta(200, now), "data": data }),
            None => json!({ "meta": self.meta(204, now), "data": {} }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        // Spoofed by an untrusted peer: ignored.
        let c = client_address(ip("192.0.2.7"), &["1.2.3.4"], &trusted);
        assert_eq!(c.ip, ip("192.0.2.7"));
        assert!(c.untrusted_header);
        // Through two trusted proxies: the right-most untrusted hop.
        let c = client_address(
            ip("10.0.0.1"),
            &["6.6.6.6, 192.0.2.9", "10.0.0.2"],
            &trusted,
        );
        assert_eq!(c.ip, ip("192.0.2.9"));
        assert_eq!(
            c.forwarded_for.as_deref(),
            Some("6.6.6.6, 192.0.2.9, 10.0.0.2")
        );
        // Missing header: the peer.
        let c = client_address(ip("10.0.0.1"), &[], &trusted);
        assert_eq!((c.ip, c.forwarded_for), (ip("10.0.0.1"), None));
        // Garbage ends the chain at the last readable hop.
        let c = client_address(ip("10.0.0.1"), &["junk, 10.0.0.3"], &trusted);
        assert_eq!(c.ip, ip("10.0.0.3"));
        let c = client_address(ip("10.0.0.1"), &["[2001:db8::1]:443"], &trusted);
        assert_eq!(c.ip, ip("2001:db8::1"));
    }

    fn event(kind: ReportKind, success: bool, version: &str, at: &str) -> Event {
        Event {
            kind,
            success,
            edge_id: "a1b2c3".into(),
            proxy_edge_id: "m1d000".into(),
            package_name: format!("pkg-{version}"),
            template_set_version: version.into(),
            ip_address: "192.0.2.1".into(),
            received_at: at.into(),
        }
    }

    #[test]
    fn summaries_fold_late_and_repeated_reports() {
        let first = event(ReportKind::Download, true, "0.05", "2024-01-01T10:00:00Z");
        let mut s = Summary::new(&first);
        s.fold(&first, 50);
        s.fold(
            &event(
                ReportKind::Consumption,
                false,
                "0.05",
                "2024-01-01T10:01:00Z",
            ),
            50,
        );
        s.fold(
            &event(ReportKind::Download, true, "0.06", "2024-01-01T10:02:00Z"),
            50,
        );
        // A late report for an older version does not change the latest.
        s.fold(
            &event(
                ReportKind::Consumption,
                true,
                "0.05",
                "2024-01-01T09:00:00Z",
            ),
            50,
        );
        s.fold(
            &event(ReportKind::Download, true, "0.00", "2024-01-01T11:00:00Z"),
            50,
        );
        // A late download report still counts: only consumption was newer.
        s.fold(
            &event(ReportKind::Download, true, "0.07", "2024-01-01T10:03:00Z"),
            50,
        );
        s.fold(
            &event(
                ReportKind::Consumption,
                true,
                "0.07",
                "2024-01-01T10:04:00Z",
            ),
            50,
        );
        s.fold(
            &event(ReportKind::Download, false, "0.07", "2024-01-01T10:02:30Z"),
            50,
        );
        let v7 = s
            .versions
            .iter()
            .find(|v| v.template_set_version == "0.07")
            .unwrap();
        assert!(v7.downloaded.success && v7.consumed.success);
        s.versions.retain(|v| v.template_set_version != "0.07");
        assert_eq!(s.latest().unwrap().template_set_version, "0.06");
        assert_eq!(s.first_reported_at, "2024-01-01T09:00:00Z");
        let v5 = s
            .versions
            .iter()
            .find(|v| v.template_set_version == "0.05")
            .unwrap();
        assert!(
            !v5.consumed.success,
            "the late success is older than the failure"
        );
        let tz = TimeZone::UTC;
        let display = Display { tz: &tz };
        let report = display.edge_report(Some(&s));
        let versions: Vec<&str> = report["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["template_set_version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["0.06", "0.05", "0.00"]);
        assert_eq!(
            report["data"][1]["report"]["downloaded"]["date_time"],
            "01-01-2024 10:00:00"
        );
        assert_eq!(
            report["data"][1]["report"]["consumed"],
            json!({"success": false})
        );
    }

    #[test]
    fn info_list_pages_by_first_report_then_edge_id() {
        let tz = TimeZone::fixed(jiff::tz::offset(5));
        let display = Display { tz: &tz };
        let mut summaries = Vec::new();
        for (edge, at) in [
            ("c", "2024-01-01T00:00:02Z"),
            ("b", "2024-01-01T00:00:01Z"),
            ("a", "2024-01-01T00:00:02Z"),
            ("z", "2024-01-01T00:00:00Z"),
        ] {
            let mut e = event(ReportKind::Download, true, "0.01", at);
            e.edge_id = edge.into();
            if edge == "z" {
                e.template_set_version = "0.00".into();
            }
            let mut s = Summary::new(&e);
            s.fold(&e, 50);
            summaries.push(s);
        }
        let now = "2024-01-01T00:00:00Z".parse().unwrap();
        let page = display.info_list(summaries.clone(), 1, 2, now);
        let ids: Vec<&str> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["edge_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(
            page["pagination"],
            json!({"total": 3, "page": 1, "per_page": 2})
        );
        assert_eq!(page["meta"]["timestamp"], "2024-01-01 05:00:00");
        assert_eq!(page["data"][0]["downloaded_time"], "2024-01-01 05:00:01");
        let page = display.info_list(summaries.clone(), 2, 2, now);
        assert_eq!(page["data"].as_array().unwrap().len(), 1);
        let page = display.info_list(summaries, 3, 2, now);
        assert_eq!(page["data"], json!([]));
        assert_eq!(display.info_report(None, now)["meta"]["code"], 204);
    }
}

//! The IO shell of telemetry: reports are stored in `edge_telemetry` as one
//! immutable document each (`report:<edge>:<time>:<uuid>`) and folded into
//! the edge's summary (`summary:<edge>`, compare-and-set on `_rev`, so any
//! number of instances may take reports at once). The report endpoints
//! read the summaries (admin calls; they wait on CouchDB).
//!
//! The answer to a report is the seed's, whatever its status; only the
//! `enforce` proxy policy, a malformed body or a missing `X-Forwarded-For`
//! in strict mode refuse one.

use std::net::IpAddr;

use serde_json::json;

use super::manage::Fields;
use super::service::{Answer, EdgeService, now_rfc3339};
use super::telemetry::{self, Display, Event, ProxyCheck, ReportKind, Summary};
use crate::couch::{ErrorKind, KeyRange};
use crate::telemetry::metrics::EdgeReportLabels;

/// Tries of a summary's compare-and-set before the report is left to the
/// next one (the event itself is already stored).
const SUMMARY_ATTEMPTS: usize = 20;

fn summary_id(edge_id: &str) -> String {
    format!("summary:{edge_id}")
}

/// Where a report came from.
pub struct Origin<'a> {
    pub peer: IpAddr,
    pub forwarded_for: &'a [&'a str],
    pub token: Option<&'a str>,
}

impl EdgeService {
    /// `POST /edge_telemetry/package_{download,consumption}/<proxy>/<status>/`.
    pub async fn report(
        &self,
        kind: ReportKind,
        proxy_edge_id: &str,
        status: &str,
        fields: &Fields,
        origin: &Origin<'_>,
    ) -> Answer {
        match self
            .report_inner(kind, proxy_edge_id, status, fields, origin)
            .await
        {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn report_inner(
        &self,
        kind: ReportKind,
        proxy_edge_id: &str,
        status: &str,
        fields: &Fields,
        origin: &Origin<'_>,
    ) -> Result<Answer, Answer> {
        let settings = self.settings();
        if !self.valid_edge_id(proxy_edge_id) {
            return Err(Answer::field("proxy_edge_id", "Invalid edge id"));
        }
        // A number or boolean is invalid too: the seed's values are strings.
        let edge_id = fields
            .string(&["edge_id"])
            .ok()
            .flatten()
            .unwrap_or("")
            .trim();
        if !self.valid_edge_id(edge_id) {
            return Err(Answer::field("edge_id", "Invalid edge id"));
        }
        let text = |name: &str, max: usize| -> Result<String, Answer> {
            match fields.string(&[name]).ok().flatten().map(str::trim) {
                Some(value)
                    if !value.is_empty()
                        && value.len() <= max
                        && !value.chars().any(char::is_control) =>
                {
                    Ok(value.to_string())
                }
                _ => Err(Answer::field(
                    name,
                    &format!("Invalid {}", name.replace('_', " ")),
                )),
            }
        };
        let package_name = text("package_name", 255)?;
        let template_set_version = text("template_set_version", 64)?;
        if settings.require_forwarded_for && origin.forwarded_for.is_empty() {
            return Err(Answer::field(
                "x-forwarded-for",
                "The X-Forwarded-For header is required",
            ));
        }
        let client =
            telemetry::client_address(origin.peer, origin.forwarded_for, &settings.trusted_proxies);
        let proxy = self.edge(proxy_edge_id);
        if let Some(proxy) = &proxy {
            self.check_device(proxy, origin.token)?;
        } else if settings.device_auth == crate::config::DeviceAuth::Required {
            return Err(Answer::failure(
                401,
                "Unauthorized",
                format!("edge {proxy_edge_id} is not in the registry"),
            ));
        }
        let check = if self.is_ready() {
            telemetry::check_proxy(
                settings.proxy_policy,
                proxy.as_deref(),
                &settings.proxy_types,
            )
        } else {
            ProxyCheck::Skipped
        };
        let count = |outcome: &str| {
            let labels = EdgeReportLabels {
                kind: format!("{kind:?}").to_lowercase(),
                proxy_check: outcome.to_string(),
            };
            self.metrics.edge_reports.get_or_create(&labels).inc();
        };
        if !check.passed() {
            tracing::warn!(proxy_edge_id, edge_id, check = check.name(), detail = ?check, "telemetry through an edge that may not proxy");
            if settings.proxy_policy == telemetry::ProxyPolicy::Enforce {
                count("refused");
                return Err(Answer::failure(
                    400,
                    "Something went wrong",
                    "Invalid proxy edge",
                ));
            }
        }
        count(check.name());
        let success = status == "success";
        let event = Event {
            kind,
            success,
            edge_id: edge_id.to_string(),
            proxy_edge_id: proxy_edge_id.to_string(),
            package_name,
            template_set_version,
            ip_address: client.ip.to_string(),
            received_at: now_rfc3339(),
        };
        self.store_event(&event, status, &check, &client, origin.peer)
            .await?;
        self.fold_summary(&event).await;
        Ok(Answer::ok(
            json!({ "message": "success", "description": kind.description(success) }),
        ))
    }

    async fn store_event(
        &self,
        event: &Event,
        status: &str,
        check: &ProxyCheck,
        client: &telemetry::ClientAddress,
        peer: IpAddr,
    ) -> Result<(), Answer> {
        let mut doc = serde_json::to_value(event).expect("events serialize");
        let id = format!(
            "report:{}:{}:{}",
            event.edge_id,
            event.received_at,
            uuid::Uuid::new_v4().simple()
        );
        doc["_id"] = json!(id);
        doc["type"] = json!("telemetry_report");
        doc["status"] = json!(status.chars().take(64).collect::<String>());
        doc["proxy_check"] = json!(check.name());
        if let ProxyCheck::BadType(edge_type) = check {
            doc["proxy_edge_type"] = json!(edge_type);
        }
        doc["forwarded_for"] = json!(client.forwarded_for);
        doc["forwarded_for_ignored"] = json!(client.untrusted_header);
        doc["peer"] = json!(peer.to_string());
        doc["set_seq"] = json!(super::model::parse_set_version(&event.template_set_version).ok());
        self.telemetry_db.put(&doc).await.map(drop).map_err(|err| {
            tracing::error!(id, error = %err, "cannot store a telemetry report");
            Answer::failure(
                400,
                "Something went wrong",
                format!("the report could not be stored: {err}"),
            )
        })
    }

    /// Folds a stored report into its edge's summary (best effort: the
    /// report document is already durable).
    async fn fold_summary(&self, event: &Event) {
        let id = summary_id(&event.edge_id);
        let keep = self.settings().report_versions_kept;
        for _ in 0..SUMMARY_ATTEMPTS {
            let current = match self.telemetry_db.get(&id).await {
                Ok(current) => current,
                Err(err) => {
                    tracing::error!(id, error = %err, "cannot read a telemetry summary");
                    return;
                }
            };
            let rev = current.as_ref().and_then(|c| c.get("_rev")).cloned();
            let mut summary = current
                .and_then(|c| serde_json::from_value::<Summary>(c).ok())
                .unwrap_or_else(|| Summary::new(event));
            summary.fold(event, keep);
            let mut doc = serde_json::to_value(&summary).expect("summaries serialize");
            doc["_id"] = json!(id);
            doc["type"] = json!("telemetry_summary");
            if let Some(rev) = rev {
                doc["_rev"] = rev;
            }
            match self.telemetry_db.put(&doc).await {
                Ok(_) => return,
                Err(err) if err.is(ErrorKind::Conflict) => continue,
                Err(err) => {
                    tracing::error!(id, error = %err, "cannot write a telemetry summary");
                    return;
                }
            }
        }
        tracing::error!(
            id,
            "a telemetry summary kept conflicting; the report is stored but not summarised"
        );
    }

    async fn summaries(
        &self,
        include_docs: bool,
    ) -> Result<Vec<(String, Option<Summary>)>, Answer> {
        let rows = self
            .telemetry_db
            .all_docs_range(&KeyRange {
                start: "summary:",
                end: "summary:\u{fff0}",
                descending: false,
                include_docs,
                limit: None,
            })
            .await
            .map_err(|err| Answer::unavailable(&err))?;
        Ok(rows
            .into_iter()
            .filter(|row| row.value.as_ref().is_some_and(|v| !v.deleted))
            .map(|row| {
                let edge_id = row.key.trim_start_matches("summary:").to_string();
                let summary = row.doc.and_then(|d| serde_json::from_value(d).ok());
                (edge_id, summary)
            })
            .collect())
    }

    async fn summary(&self, edge_id: &str) -> Result<Option<Summary>, Answer> {
        let doc = self
            .telemetry_db
            .get(&summary_id(edge_id))
            .await
            .map_err(|err| Answer::unavailable(&err))?;
        Ok(doc.and_then(|d| serde_json::from_value(d).ok()))
    }

    /// `GET /edge_telemetry/report_list/`.
    pub async fn report_list(&self) -> Answer {
        match self.summaries(false).await {
            Ok(rows) => {
                let ids: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
                Answer::ok(json!({ "data": { "edge_id_list": ids } }))
            }
            Err(answer) => answer,
        }
    }

    /// `GET /edge_telemetry/report/<edge_id>`.
    pub async fn edge_report(&self, edge_id: &str) -> Answer {
        if !self.valid_edge_id(edge_id) {
            return Answer::field("edge_id", "Invalid edge id");
        }
        match self.summary(edge_id).await {
            Ok(summary) => {
                let settings = self.settings();
                let display = Display {
                    tz: &settings.report_timezone,
                };
                Answer::ok(display.edge_report(summary.as_ref()))
            }
            Err(answer) => answer,
        }
    }

    /// `GET /edge_telemetry_info_list/report/<page>/[?per_page=]`.
    pub async fn info_list(&self, page: &str, per_page: Option<&str>) -> Answer {
        let Some(page) = page
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1 && *p <= 1_000_000)
        else {
            return Answer::field("page_number", "Page number must be a positive integer");
        };
        let settings = self.settings();
        let per_page = match per_page {
            None => settings.report_page_size,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=1_000).contains(&n) => n,
                _ => return Answer::field("per_page", "per_page must be 1 to 1000"),
            },
        };
        match self.summaries(true).await {
            Ok(rows) => {
                let summaries: Vec<Summary> = rows.into_iter().filter_map(|(_, s)| s).collect();
                let display = Display {
                    tz: &settings.report_timezone,
                };
                Answer::ok(display.info_list(summaries, page, per_page, jiff::Timestamp::now()))
            }
            Err(answer) => answer,
        }
    }

    /// `GET /edge_telemetry_info/report/<edge_id>/`.
    pub async fn info_report(&self, edge_id: &str) -> Answer {
        if !self.valid_edge_id(edge_id) {
            return Answer::field("edge_id", "Invalid edge id");
        }
        match self.summary(edge_id).await {
            Ok(summary) => {
                let settings = self.settings();
                let display = Display {
                    tz: &settings.report_timezone,
                };
                Answer::ok(display.info_report(summary.as_ref(), jiff::Timestamp::now()))
            }
            Err(answer) => answer,
        }
    }
}

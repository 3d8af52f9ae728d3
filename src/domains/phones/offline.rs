//! `caldera render --realm R --mac M [--file F]`: what a phone would
//! receive, built straight from the CouchDB data with the same pure code
//! the daemon uses (no daemon, no cache needed). It reads `units` and
//! `sip_auth` whole (and the attachment bodies of template overrides), then
//! builds the account, the unit and its model's common files.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::build;
use super::mac::Mac;
use super::model::{self, DocType, SIP_AUTH, TEMPLATE_BODIES, UNITS};
use super::{PhonesBuilder, phones_index};
use crate::couch::{Body, Client, Db};
use crate::domains::{Builder, Built, Issue};
use crate::feeds::load_database;
use crate::rebuild::index::{Index, Reads, SourceDoc, SourceId};

/// Why there is nothing to print.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0:?} is not a MAC address")]
    BadMac(String),
    #[error("no served account has realm (or id) {0:?}")]
    UnknownRealm(String),
    #[error("account {account} has no enabled unit with MAC {mac}")]
    UnknownMac { account: String, mac: String },
    #[error("unit {unit} is not served ({reason})")]
    NotServed { unit: String, reason: String },
    #[error("unit {unit} has no file {file:?}; it has: {files}")]
    NoSuchFile {
        unit: String,
        file: String,
        files: String,
    },
    #[error("CouchDB: {0}")]
    Unavailable(String),
}

impl From<crate::couch::Error> for RenderError {
    fn from(err: crate::couch::Error) -> RenderError {
        RenderError::Unavailable(err.to_string())
    }
}

/// What a phone would receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Rendered {
    /// Every file of the unit (device and model-common), with the build's
    /// errors.
    All(Value),
    /// One file: its content type and body.
    File { content_type: String, body: String },
}

/// The bodies of attachment template overrides, as the fetcher gives them.
async fn template_bodies(
    db: &Db,
    units: &BTreeMap<String, Arc<SourceDoc>>,
) -> BTreeMap<String, Arc<SourceDoc>> {
    let mut bodies = BTreeMap::new();
    for (id, doc) in units {
        let Some(json) = doc.json() else { continue };
        if model::doc_type(&json) != Some(DocType::Template) || json.get("template").is_some() {
            continue;
        }
        let Ok(name) = model::attachment_name(&json) else {
            continue;
        };
        let body = match db.get_attachment(id, &name).await {
            Ok(Some((_, bytes))) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => json!({"text": text}),
                Err(_) => json!({"error": "the attachment is not UTF-8 text"}),
            },
            Ok(None) => json!({"error": "the attachment does not exist"}),
            Err(err) => json!({"error": format!("cannot fetch the attachment: {err}")}),
        };
        bodies.insert(
            id.clone(),
            Arc::new(SourceDoc {
                id: id.clone(),
                rev: "1-offline".into(),
                body: Body::of(&body),
            }),
        );
    }
    bodies
}

fn build(index: &Index, key: &str) -> Built {
    let mut reads = Reads::new(index);
    PhonesBuilder.build(key, &mut reads)
}

fn issues_json(issues: &[Issue]) -> Value {
    let mut list: Vec<Value> = issues
        .iter()
        .map(|i| json!({"db": &*i.source, "doc": i.doc, "reason": i.reason}))
        .collect();
    list.sort_by_key(Value::to_string);
    list.dedup();
    Value::Array(list)
}

/// The served account of a realm (or an account id).
fn find_account(index: &Index, realm: &str) -> Option<String> {
    let wanted = model::normalise_realm(realm);
    let candidates: Vec<String> = index
        .docs(UNITS)
        .filter(|d| {
            d.json()
                .is_some_and(|j| model::doc_type(&j) == Some(DocType::Account))
        })
        .filter(|d| {
            d.id == realm
                || d.json()
                    .and_then(|j| j.get("realm")?.as_str().and_then(model::normalise_realm))
                    == wanted
        })
        .map(|d| d.id.clone())
        .collect();
    candidates
        .into_iter()
        .find(|id| match build(index, &format!("account:{id}")) {
            Built::Content { content, .. } => content["served"] == true || *id == realm,
            _ => false,
        })
}

/// Builds what the phone with `mac` at `realm` would receive.
///
/// # Errors
/// An unknown realm or MAC, a unit that is not served, a missing file, or
/// CouchDB unreachable.
pub async fn render_offline(
    client: &Client,
    units_db: &str,
    sip_auth_db: &str,
    realm: &str,
    mac: &str,
    file: Option<&str>,
) -> Result<Rendered, RenderError> {
    let mac = Mac::parse(mac).ok_or_else(|| RenderError::BadMac(mac.to_string()))?;
    let units_db = client.db(units_db);
    let units = load_database(&units_db).await?;
    let devices = load_database(&client.db(sip_auth_db)).await?;
    let bodies = template_bodies(&units_db, &units).await;
    let mut index = phones_index();
    index.replace(&SourceId::from(UNITS), units);
    index.replace(&SourceId::from(SIP_AUTH), devices);
    index.replace(&SourceId::from(TEMPLATE_BODIES), bodies);
    let account =
        find_account(&index, realm).ok_or_else(|| RenderError::UnknownRealm(realm.to_string()))?;
    let unit_ids: Vec<String> = index
        .view(UNITS, &build::mac_view(&account, &mac))
        .filter(|d| {
            d.json().is_some_and(|j| {
                model::doc_type(&j) == Some(DocType::Unit)
                    && j.get("enabled") != Some(&json!(false))
            })
        })
        .map(|d| d.id.clone())
        .collect();
    let unknown = || RenderError::UnknownMac {
        account: account.clone(),
        mac: mac.lower(),
    };
    let unit_id = unit_ids.first().cloned().ok_or_else(unknown)?;
    let (content, mut issues) = match build(&index, &format!("unit:{unit_id}")) {
        Built::Content { content, issues } => (content, issues),
        Built::Failed { issues } => {
            let reason = issues
                .iter()
                .map(|i| i.reason.clone())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RenderError::NotServed {
                unit: unit_id,
                reason,
            });
        }
        Built::Absent => return Err(unknown()),
    };
    if content["served"] != true {
        let reason = content["reason"]
            .as_str()
            .unwrap_or("not served")
            .to_string();
        return Err(RenderError::NotServed {
            unit: unit_id,
            reason,
        });
    }
    let mut files = content["files"].as_object().cloned().unwrap_or_default();
    if let Some(key) = content["common"]["key"].as_str()
        && let Built::Content {
            content: common,
            issues: more,
        } = build(&index, key)
    {
        files.extend(common["files"].as_object().cloned().unwrap_or_default());
        issues.extend(more);
    }
    match file {
        Some(name) => {
            let found = files.get(name).ok_or_else(|| RenderError::NoSuchFile {
                unit: unit_id.clone(),
                file: name.to_string(),
                files: files.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
            Ok(Rendered::File {
                content_type: found["content_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                body: found["body"].as_str().unwrap_or_default().to_string(),
            })
        }
        None => {
            let files: serde_json::Map<String, Value> = files
                .into_iter()
                .map(|(name, f)| {
                    (
                        name,
                        json!({"content_type": f["content_type"], "body": f["body"]}),
                    )
                })
                .collect();
            Ok(Rendered::All(json!({
                "account": account, "unit": unit_id, "mac": mac.lower(), "files": files,
                "errors": issues_json(&issues),
            })))
        }
    }
}

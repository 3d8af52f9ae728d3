//! The IO shell of the management calls: templates, versions, master
//! packages, links and assignments, written to `edge_config` (these calls
//! wait on CouchDB by nature), with the seed's answers. Listings are read
//! from the catalog in the mirror.
//!
//! Every write that changes what some edge receives appends one set-log
//! entry after its document is stored; the call returns once the catalog
//! shows the entry (or `edge.write_wait` passed), so a device call right
//! after a management call sees its effect.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::couchdb;
use super::model::{
    self, Class, MASTER_COUNTER, POST_SCRIPT, PRE_SCRIPT, Render, TEMPLATE_COUNTER, TEMPLATE_FILE,
    UNINSTALL_SCRIPT, kind, render_set_version,
};
use super::service::{Answer, EdgeService, Written, now_rfc3339};
use crate::couch::ErrorKind;

/// An uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// A request's fields, whatever its content type (multipart form,
/// urlencoded form or JSON object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub text: BTreeMap<String, String>,
    pub files: BTreeMap<String, Upload>,
    /// Fields a JSON body gave as a number or boolean: their text is in
    /// `text` (permissions may be `644`), but a name or a file given so is
    /// a wrong type.
    pub non_text: BTreeSet<String>,
}

impl Fields {
    /// The first of `names` (aliases) given as text.
    pub fn text(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|n| self.text.get(*n).map(String::as_str))
    }

    /// The first of `names` given as text, refusing a JSON number or
    /// boolean (a name or path must be a string).
    ///
    /// # Errors
    /// The seed-style field error naming the field.
    pub fn string(&self, names: &[&str]) -> Result<Option<&str>, Answer> {
        match names.iter().find(|n| self.text.contains_key(**n)) {
            Some(name) if self.non_text.contains(*name) => {
                Err(Answer::field(name, "must be a string"))
            }
            Some(name) => Ok(self.text.get(*name).map(String::as_str)),
            None => Ok(None),
        }
    }

    /// `file`, refusing content given as a JSON number or boolean.
    ///
    /// # Errors
    /// The seed-style field error naming the field.
    pub fn file_checked(&self, names: &[&str]) -> Result<Option<Upload>, Answer> {
        if let Some(name) = names
            .iter()
            .find(|n| !self.files.contains_key(**n) && self.non_text.contains(**n))
        {
            return Err(Answer::field(name, "must be a file or a string"));
        }
        Ok(self.file(names))
    }

    /// The first of `names` given as a file — or as text, for clients
    /// that send the content inline (JSON, urlencoded).
    pub fn file(&self, names: &[&str]) -> Option<Upload> {
        names.iter().find_map(|n| {
            self.files.get(*n).cloned().or_else(|| {
                self.text.get(*n).map(|t| Upload {
                    file_name: None,
                    content_type: None,
                    bytes: Bytes::from(t.clone().into_bytes()),
                })
            })
        })
    }

    fn flag(&self, names: &[&str]) -> Result<Option<bool>, String> {
        match self.text(names).map(str::trim) {
            None => Ok(None),
            Some("true" | "1" | "yes" | "on") => Ok(Some(true)),
            Some("false" | "0" | "no" | "off" | "") => Ok(Some(false)),
            Some(other) => Err(format!("{other:?} is not true or false")),
        }
    }
}

/// The attachments a master package's form may carry: (field names, attachment).
const SCRIPT_FIELDS: [(&[&str], &str); 3] = [
    (&["uninstall_file"], UNINSTALL_SCRIPT),
    (&["pre_script_file", "pre_script_files"], PRE_SCRIPT),
    (&["post_script_file", "post_script_files"], POST_SCRIPT),
];

fn inline_attachment(upload: &Upload, default_type: &str) -> Value {
    json!({
        "content_type": upload.content_type.clone().unwrap_or_else(|| default_type.to_string()),
        "data": STANDARD.encode(&upload.bytes),
    })
}

fn catalog_list<'a>(catalog: &'a Value, what: &str) -> impl Iterator<Item = &'a Value> {
    catalog
        .get(what)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn find_by_id<'a>(catalog: &'a Value, what: &str, id: u64) -> Option<&'a Value> {
    catalog_list(catalog, what).find(|e| e.get("id").and_then(Value::as_u64) == Some(id))
}

fn seq_visible(seq: u64) -> impl Fn(&Value) -> bool {
    move |catalog| {
        catalog
            .get("latest_set_seq")
            .and_then(Value::as_u64)
            .is_some_and(|s| s >= seq)
    }
}

impl EdgeService {
    /// The catalog's content, or the not-ready answer.
    fn catalog_content(&self) -> Result<Value, Answer> {
        if !self.is_ready() {
            return Err(Answer::not_ready());
        }
        Ok(self
            .catalog()
            .map(|c| c.content.value().into_owned())
            .unwrap_or_else(|| json!({})))
    }

    /// Appends a set-log entry and waits until the cache shows it.
    async fn commit(&self, written: Written, kind: &str, fields: Value) -> Result<u64, Answer> {
        let seq = couchdb::append_set_log(&self.config_db, kind, fields, &now_rfc3339())
            .await
            .map_err(|err| Answer::unavailable(&err))?;
        let written = [written, Written::Doc(model::set_log_doc_id(seq))];
        self.publish(&written, seq_visible(seq)).await;
        Ok(seq)
    }

    // -- templates ------------------------------------------------------------

    /// `POST /config_template/`.
    pub async fn create_template(&self, fields: &Fields) -> Answer {
        match self.create_template_inner(fields).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn create_template_inner(&self, fields: &Fields) -> Result<Answer, Answer> {
        let name = fields.string(&["name"])?.unwrap_or("").trim().to_string();
        if !model::valid_template_name(&name) {
            return Err(Answer::field(
                "name",
                "Template name must be a file name (no / or \\, no control characters)",
            ));
        }
        let Some(description) = fields.string(&["description"])? else {
            return Err(Answer::field(
                "description",
                "Template description is required",
            ));
        };
        let mut doc = Map::new();
        doc.insert("type".into(), json!("config_template"));
        doc.insert("name".into(), json!(name));
        doc.insert("description".into(), json!(description));
        for field in ["owner", "group"] {
            if let Some(owner) = fields
                .string(&[field])?
                .map(str::trim)
                .filter(|o| !o.is_empty())
            {
                if !model::valid_owner(owner) {
                    return Err(Answer::field(field, "Invalid user or group name"));
                }
                doc.insert(field.into(), json!(owner));
            }
        }
        if let Some(mode) = fields
            .text(&["permissions", "permission"])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let mode = model::parse_permissions(&json!(mode)).map_err(|_| {
                Answer::field(
                    "permissions",
                    "Permissions must be three or four octal digits",
                )
            })?;
            doc.insert("permissions".into(), json!(format!("{mode:o}")));
        }
        if let Some(path) = fields
            .string(&["path"])?
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            if model::check_target_path(path).is_err() {
                // The original's answer, status included.
                return Ok(Answer::message(200, "Incorrect path"));
            }
            doc.insert("path".into(), json!(path));
        }
        let raw = fields
            .flag(&["raw"])
            .map_err(|why| Answer::field("raw", &why))?;
        let render = match fields.string(&["render"])? {
            Some(text) => {
                Render::parse(text.trim()).map_err(|why| Answer::field("render", &why))?
            }
            None if raw == Some(true) => Render::Raw,
            None => Render::Handlebars,
        };
        doc.insert("render".into(), json!(render.name()));
        doc.insert("created_at".into(), json!(now_rfc3339()));
        let (template_id, _) = couchdb::create_with_id(&self.config_db, TEMPLATE_COUNTER, |id| {
            let mut doc = doc.clone();
            doc.insert("_id".into(), json!(model::template_doc_id(id)));
            doc.insert("template_id".into(), json!(id));
            Value::Object(doc)
        })
        .await
        .map_err(|err| Answer::unavailable(&err))?;
        self.publish(
            &[Written::Doc(model::template_doc_id(template_id))],
            move |catalog| find_by_id(catalog, "templates", template_id).is_some(),
        )
        .await;
        Ok(Answer::ok(
            json!({ "message": "Template added", "template_id": template_id }),
        ))
    }

    /// `POST /config_template/version/<id>/`: a new version from `template_file`.
    pub async fn add_version(&self, template_id: u64, fields: &Fields) -> Answer {
        match self.add_version_inner(template_id, fields).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn add_version_inner(&self, template_id: u64, fields: &Fields) -> Result<Answer, Answer> {
        let failed = |why: String| Answer::failure(400, "Template version not added", why);
        let template = self
            .config_db
            .get(&model::template_doc_id(template_id))
            .await
            .map_err(|err| Answer::unavailable(&err))?;
        if template.is_none() {
            return Err(Answer::failure(
                404,
                "Template version not added",
                format!("Could not find template id {template_id}"),
            ));
        }
        let Some(upload) = fields.file_checked(&["template_file"])? else {
            return Err(Answer::field(
                "template_file",
                "A template file is required",
            ));
        };
        let limit = self.settings().max_upload_bytes;
        if upload.bytes.len() > limit {
            return Err(Answer::failure(
                413,
                "Template version not added",
                format!("the file is larger than {limit} bytes"),
            ));
        }
        let comment = fields.string(&["comment"])?.unwrap_or("").to_string();
        let sha256 = model::sha256_hex(&upload.bytes);
        let attachment = inline_attachment(&upload, "application/octet-stream");
        let prefix = format!("template_version:{template_id:08}:");
        let now = now_rfc3339();
        let (version, _) =
            couchdb::create_numbered(&self.config_db, &prefix, model::MAX_VERSION, |n| {
                json!({
                    "_id": model::version_doc_id(template_id, n),
                    "type": "template_version",
                    "template_id": template_id,
                    "version": n,
                    "version_no": render_set_version(n),
                    "comment": comment,
                    "sha256": sha256,
                    "size": upload.bytes.len(),
                    "file_name": upload.file_name,
                    "created_at": now,
                    "_attachments": { TEMPLATE_FILE: attachment },
                })
            })
            .await
            .map_err(|err| match err.kind {
                ErrorKind::TooLarge => {
                    failed(format!("CouchDB refused the file as too large: {err}"))
                }
                _ => Answer::unavailable(&err),
            })?;
        let seq = self
            .commit(
                Written::Doc(model::version_doc_id(template_id, version)),
                kind::TEMPLATE_VERSION,
                json!({ "template_id": template_id, "version": version }),
            )
            .await?;
        Ok(Answer::ok(json!({
            "message": "Template version added",
            "version_no": render_set_version(version),
            "set_version": render_set_version(seq),
        })))
    }

    /// `GET /config_template/`.
    pub fn list_templates(&self) -> Answer {
        let catalog = match self.catalog_content() {
            Ok(c) => c,
            Err(answer) => return answer,
        };
        let data: Vec<Value> = catalog_list(&catalog, "templates")
            .map(|t| json!({ "id": t["id"], "name": t["name"], "description": t["description"] }))
            .collect();
        Answer::ok(json!({ "data": data }))
    }

    /// A template's file at its latest (or the given) version:
    /// `(name, path, version_no, content type, bytes)`.
    ///
    /// # Errors
    /// 404 `{"message": "Template file not found"}`, 400 for a bad version.
    pub async fn template_file(
        &self,
        template_id: u64,
        version: Option<&str>,
    ) -> Result<(String, Option<String>, String, String, Bytes), Answer> {
        let not_found = || Answer::message(404, "Template file not found");
        let unavailable = |err: crate::couch::Error| Answer::unavailable(&err);
        let template = self
            .config_db
            .get(&model::template_doc_id(template_id))
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let version_id = match version.map(str::trim).filter(|v| !v.is_empty()) {
            Some(text) => {
                let n = model::parse_set_version(text)
                    .map_err(|_| Answer::field("version", "Invalid version"))?;
                model::version_doc_id(template_id, n)
            }
            None => couchdb::newest_with_prefix(
                &self.config_db,
                &format!("template_version:{template_id:08}:"),
            )
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?,
        };
        let (content_type, bytes) = self
            .config_db
            .get_attachment(&version_id, TEMPLATE_FILE)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let version_no = version_id
            .rsplit(':')
            .next()
            .and_then(|n| n.parse().ok())
            .map_or_else(String::new, render_set_version);
        let text = |f: &str| template.get(f).and_then(Value::as_str).map(str::to_string);
        Ok((
            text("name").unwrap_or_else(|| format!("template_{template_id}")),
            text("path"),
            version_no,
            content_type,
            bytes,
        ))
    }

    /// `POST /master_package_config/<m>/assign/<t>/`.
    pub async fn assign_template(&self, master_id: u64, template_id: u64) -> Answer {
        match self.assign_template_inner(master_id, template_id).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn assign_template_inner(
        &self,
        master_id: u64,
        template_id: u64,
    ) -> Result<Answer, Answer> {
        let refused = |why: String| Answer::failure(400, "Master package config not assigned", why);
        let unavailable = |err: crate::couch::Error| Answer::unavailable(&err);
        let master = self
            .config_db
            .get(&model::master_doc_id(master_id))
            .await
            .map_err(unavailable)?;
        let template = self
            .config_db
            .get(&model::template_doc_id(template_id))
            .await
            .map_err(unavailable)?;
        let (Some(master), Some(template)) = (master, template) else {
            return Err(refused(format!(
                "Could not find master id {master_id} or template id {template_id}"
            )));
        };
        self.check_file_names(&master, &template, template_id)
            .map_err(|why| Answer::failure(409, "Master package config not assigned", why))?;
        let link = json!({
            "_id": model::link_doc_id(master_id, template_id),
            "type": "mp_template",
            "master_id": master_id,
            "template_id": template_id,
            "created_at": now_rfc3339(),
        });
        match self.config_db.put(&link).await {
            Ok(_) => {}
            Err(err) if err.is(ErrorKind::Conflict) => {
                return Ok(Answer::message(
                    200,
                    "Master package config already assigned",
                ));
            }
            Err(err) => return Err(unavailable(err)),
        }
        self.commit(
            Written::Doc(model::link_doc_id(master_id, template_id)),
            kind::LINK,
            json!({ "master_id": master_id, "template_id": template_id }),
        )
        .await?;
        Ok(Answer::message(200, "Master package config assigned"))
    }

    /// Two templates with one file name in one master package would
    /// overwrite each other in its directory; scripts' names are reserved.
    fn check_file_names(
        &self,
        master: &Value,
        template: &Value,
        template_id: u64,
    ) -> Result<(), String> {
        let dir = master.get("path").and_then(Value::as_str);
        let name_of = |t: &Value| -> Option<String> {
            let path = t
                .get("path")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    Some(format!(
                        "{}/{}",
                        dir?.trim_end_matches('/'),
                        t.get("name")?.as_str()?
                    ))
                })?;
            Some(model::file_name(&path).to_string())
        };
        let Some(name) = name_of(template) else {
            return Ok(());
        };
        if model::RESERVED_FILE_NAMES.contains(&name.as_str()) {
            return Err(format!(
                "the file name {name:?} is reserved for the package's scripts"
            ));
        }
        let master_id = master.get("master_id").and_then(Value::as_u64).unwrap_or(0);
        let Some(catalog) = self.catalog() else {
            return Ok(());
        };
        let catalog = &catalog.content.value();
        let others = find_by_id(catalog, "masters", master_id)
            .and_then(|m| m.get("templates"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for other in others
            .iter()
            .filter_map(Value::as_u64)
            .filter(|t| *t != template_id)
        {
            if let Some(entry) = find_by_id(catalog, "templates", other)
                && name_of(entry).as_deref() == Some(name.as_str())
            {
                return Err(format!(
                    "template {other} of master package {master_id} already installs a file named {name:?}"
                ));
            }
        }
        Ok(())
    }

    /// `GET /config_template/<master_id>/`: a master's templates with their
    /// latest version numbers.
    pub fn list_master_templates(&self, master_id: u64) -> Answer {
        let catalog = match self.catalog_content() {
            Ok(c) => c,
            Err(answer) => return answer,
        };
        let Some(master) = find_by_id(&catalog, "masters", master_id) else {
            return Answer::message(404, &format!("Could not find master id {master_id}"));
        };
        let data: Vec<Value> = master
            .get("templates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .filter_map(|t| find_by_id(&catalog, "templates", t))
            .map(|t| {
                // The original answers a JSON number (0.02).
                let version = t["version"].as_u64().map(|v| json!(v as f64 / 100.0));
                json!({
                    "id": t["id"],
                    "name": t["name"],
                    "description": t["description"],
                    "version_no": version.unwrap_or(Value::Null),
                })
            })
            .collect();
        Answer::ok(json!({ "data": data }))
    }

    // -- master packages ------------------------------------------------------

    /// Applies a master package form to a document; `create` requires the
    /// name and description; scripts are at most `limit` bytes each.
    fn apply_master_fields(
        doc: &mut Map<String, Value>,
        fields: &Fields,
        create: bool,
        limit: usize,
    ) -> Result<bool, Answer> {
        let before = doc.clone();
        match fields.string(&["name"])?.map(str::trim) {
            Some(name) if !name.is_empty() => {
                doc.insert("name".into(), json!(name));
            }
            _ if create => return Err(Answer::field("name", "Master package name is required")),
            _ => {}
        }
        match fields.string(&["description"])? {
            Some(description) => {
                doc.insert("description".into(), json!(description));
            }
            // The seed lists it among the required keys, as for templates.
            None if create => {
                return Err(Answer::field(
                    "description",
                    "Master package description is required",
                ));
            }
            None => {}
        }
        if let Some(path) = fields
            .string(&["path"])?
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let dir = model::check_default_dir(path)
                .map_err(|_| Answer::field("path", "Path must be an absolute directory"))?;
            doc.insert("path".into(), json!(dir));
        }
        for (names, key) in [(&["user", "owner"][..], "user"), (&["group"][..], "group")] {
            if let Some(owner) = fields
                .string(names)?
                .map(str::trim)
                .filter(|o| !o.is_empty())
            {
                if !model::valid_owner(owner) {
                    return Err(Answer::field(key, "Invalid user or group name"));
                }
                doc.insert(key.into(), json!(owner));
            }
        }
        if let Some(mode) = fields
            .text(&["permission", "permissions"])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let mode = model::parse_permissions(&json!(mode)).map_err(|_| {
                Answer::field(
                    "permission",
                    "Permissions must be three or four octal digits",
                )
            })?;
            doc.insert("permission".into(), json!(format!("{mode:o}")));
        }
        if let Some(seq) = fields.text(&["execution_sequence"]).map(str::trim) {
            let value = if seq.is_empty() || seq == "null" {
                Value::Null
            } else {
                json!(
                    seq.parse::<i64>()
                        .ok()
                        .filter(|n| n.abs() <= 1_000_000)
                        .ok_or_else(|| {
                            Answer::field(
                                "execution_sequence",
                                "Execution sequence must be an integer",
                            )
                        })?
                )
            };
            doc.insert("execution_sequence".into(), value);
        }
        if let Some(status) = fields.text(&["status"]).map(str::trim) {
            let status: u8 = match status {
                "0" => 0,
                "1" => 1,
                _ => return Err(Answer::field("status", "Status must be 0 or 1")),
            };
            doc.insert("status".into(), json!(status));
        }
        let attachments = doc.entry("_attachments").or_insert_with(|| json!({}));
        for (names, attachment) in SCRIPT_FIELDS {
            if let Some(upload) = fields.file_checked(names)? {
                // The body limit leaves room for the form around a file.
                if upload.bytes.len() > limit {
                    let what = if create { "added" } else { "updated" };
                    return Err(Answer::failure(
                        413,
                        &format!("Master Package not {what}"),
                        format!("{} is larger than {limit} bytes", names[0]),
                    ));
                }
                attachments[attachment] = inline_attachment(&upload, "text/x-shellscript");
            }
        }
        if attachments.as_object().is_some_and(Map::is_empty) {
            doc.remove("_attachments");
        }
        Ok(*doc != before)
    }

    /// `POST /master_package/`.
    pub async fn create_master(&self, fields: &Fields) -> Answer {
        match self.create_master_inner(fields).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn create_master_inner(&self, fields: &Fields) -> Result<Answer, Answer> {
        let mut doc = Map::new();
        doc.insert("type".into(), json!("master_package"));
        doc.insert("status".into(), json!(model::ACTIVE));
        doc.insert("execution_sequence".into(), Value::Null);
        let limit = self.settings().max_upload_bytes;
        Self::apply_master_fields(&mut doc, fields, true, limit)?;
        doc.insert("created_at".into(), json!(now_rfc3339()));
        let (master_id, _) = couchdb::create_with_id(&self.config_db, MASTER_COUNTER, |id| {
            let mut doc = doc.clone();
            doc.insert("_id".into(), json!(model::master_doc_id(id)));
            doc.insert("master_id".into(), json!(id));
            Value::Object(doc)
        })
        .await
        .map_err(|err| Answer::unavailable(&err))?;
        self.commit(
            Written::Doc(model::master_doc_id(master_id)),
            kind::MASTER_CREATE,
            json!({ "master_id": master_id }),
        )
        .await?;
        Ok(Answer::ok(
            json!({ "message": "Master Package added", "master_id": master_id }),
        ))
    }

    /// Read-modify-write of one document, retried on 409. `change` returns
    /// whether it changed anything; `Ok(None)`: the document is missing.
    async fn modify(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Map<String, Value>) -> Result<bool, Answer>,
    ) -> Result<Option<bool>, Answer> {
        for _ in 0..32 {
            let Some(Value::Object(mut doc)) = self
                .config_db
                .get(id)
                .await
                .map_err(|err| Answer::unavailable(&err))?
            else {
                return Ok(None);
            };
            if !change(&mut doc)? {
                return Ok(Some(false));
            }
            doc.insert("updated_at".into(), json!(now_rfc3339()));
            match self.config_db.put(&Value::Object(doc)).await {
                Ok(_) => return Ok(Some(true)),
                Err(err) if err.is(ErrorKind::Conflict) => continue,
                Err(err) => return Err(Answer::unavailable(&err)),
            }
        }
        Err(Answer::failure(
            503,
            "Something went wrong",
            format!("{id} keeps changing; try again"),
        ))
    }

    /// `POST` or `PUT /master_package/<id>/`: every field optional.
    pub async fn update_master(&self, master_id: u64, fields: &Fields) -> Answer {
        let id = model::master_doc_id(master_id);
        let limit = self.settings().max_upload_bytes;
        let result = self
            .modify(&id, |doc| {
                Self::apply_master_fields(doc, fields, false, limit)
            })
            .await;
        match result {
            Err(answer) => answer,
            Ok(None) => Answer::message(404, "The requested master package is not present"),
            Ok(Some(false)) => Answer::message(200, "Master Package updated"),
            Ok(Some(true)) => {
                match self
                    .commit(
                        Written::Doc(id),
                        kind::MASTER_UPDATE,
                        json!({ "master_id": master_id }),
                    )
                    .await
                {
                    Ok(_) => Answer::message(200, "Master Package updated"),
                    Err(answer) => answer,
                }
            }
        }
    }

    /// `GET /master_package/`.
    pub fn list_masters(&self) -> Answer {
        let catalog = match self.catalog_content() {
            Ok(c) => c,
            Err(answer) => return answer,
        };
        let data: Vec<Value> = catalog_list(&catalog, "masters")
            .map(|m| json!({ "id": m["id"], "name": m["name"], "description": m["description"], "status": m["status"] }))
            .collect();
        Answer::ok(json!({ "data": data }))
    }

    /// `DELETE /master_package/<id>/`: status 0, its edges uninstall it.
    pub async fn delete_master(&self, master_id: u64) -> Answer {
        let id = model::master_doc_id(master_id);
        let result = self
            .modify(&id, |doc| {
                if doc.get("status").and_then(Value::as_u64) == Some(0) {
                    return Ok(false);
                }
                doc.insert("status".into(), json!(model::DELETED));
                Ok(true)
            })
            .await;
        match result {
            Err(answer) => answer,
            Ok(None) => Answer::failure(
                400,
                "Master Package not deleted",
                format!("Could not find master id {master_id}"),
            ),
            Ok(Some(false)) => Answer::message(200, "Master Package deleted"),
            Ok(Some(true)) => {
                match self
                    .commit(
                        Written::Doc(id),
                        kind::MASTER_DELETE,
                        json!({ "master_id": master_id }),
                    )
                    .await
                {
                    Ok(_) => Answer::message(200, "Master Package deleted"),
                    Err(answer) => answer,
                }
            }
        }
    }

    // -- assignments ----------------------------------------------------------

    /// The class a body names, if it exists.
    async fn existing_class(&self, fields: &Fields) -> Result<Result<Class, String>, Answer> {
        // Missing or mistyped keys are named, not reported as a bad pair.
        let text = |name: &str| match fields.string(&[name]) {
            Ok(Some(text)) if !text.trim().is_empty() => Ok(text.trim()),
            Ok(_) => Err(format!("{name} is required")),
            Err(_) => Err(format!("{name} must be a string")),
        };
        let (edge_type, sub) = match (text("edge_type"), text("edge_sub_type")) {
            (Ok(edge_type), Ok(sub)) => (edge_type, sub),
            (Err(why), _) | (_, Err(why)) => return Ok(Err(why)),
        };
        let class = match Class::new(edge_type, sub) {
            Ok(class) => class,
            Err(why) => return Ok(Err(why)),
        };
        let found = self
            .config_db
            .get(&model::class_doc_id(&class))
            .await
            .map_err(|err| Answer::unavailable(&err))?;
        Ok(match found {
            Some(_) => Ok(class),
            None => Err(format!("{class} is not an edge type and sub-type pair")),
        })
    }

    /// Whether master package `master_id` exists (`Err`: why not).
    async fn existing_master(&self, master_id: u64) -> Result<Result<(), String>, Answer> {
        let master = self
            .config_db
            .get(&model::master_doc_id(master_id))
            .await
            .map_err(|err| Answer::unavailable(&err))?;
        Ok(match master {
            Some(_) => Ok(()),
            None => Err(format!("Could not find master id {master_id}")),
        })
    }

    /// `POST /master_package/assign/<id>/` `{"edge_type", "edge_sub_type"}`.
    pub async fn assign_master(&self, master_id: u64, fields: &Fields) -> Answer {
        match self.assign_master_inner(master_id, fields).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn assign_master_inner(&self, master_id: u64, fields: &Fields) -> Result<Answer, Answer> {
        let refused = |why: String| {
            let mut answer = Answer::failure(400, "Package not assigned", "Something went wrong");
            answer.body["reason"] = json!(why);
            answer
        };
        let class = self.existing_class(fields).await?.map_err(refused)?;
        self.existing_master(master_id).await?.map_err(refused)?;
        let id = model::assign_doc_id(master_id, &class);
        let doc = json!({
            "_id": id,
            "type": "mp_assign",
            "master_id": master_id,
            "edge_type": class.edge_type,
            "edge_sub_type": class.edge_sub_type,
            "state": "assigned",
            "created_at": now_rfc3339(),
        });
        match self.config_db.put(&doc).await {
            Ok(_) => {}
            Err(err) if err.is(ErrorKind::Conflict) => {
                // Assigned already — unless it was left to uninstall.
                let revived = self
                    .modify(&id, |doc| {
                        if doc.get("state").and_then(Value::as_str) != Some("uninstall") {
                            return Ok(false);
                        }
                        doc.insert("state".into(), json!("assigned"));
                        Ok(true)
                    })
                    .await?;
                if revived != Some(true) {
                    return Ok(Answer::message(200, "Package already assigned"));
                }
            }
            Err(err) => return Err(Answer::unavailable(&err)),
        }
        self.commit(
            Written::Doc(id),
            kind::ASSIGN,
            Self::assignment_fields(master_id, &class),
        )
        .await?;
        Ok(Answer::message(200, "Package assigned"))
    }

    fn assignment_fields(master_id: u64, class: &Class) -> Value {
        json!({
            "master_id": master_id,
            "edge_type": class.edge_type,
            "edge_sub_type": class.edge_sub_type,
        })
    }

    /// `DELETE /master_package/assign/<id>/` `{"edge_type", "edge_sub_type"}`
    /// (`"uninstall": true` makes the class's edges uninstall it).
    pub async fn unassign_master(&self, master_id: u64, fields: &Fields) -> Answer {
        match self.unassign_master_inner(master_id, fields).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn unassign_master_inner(
        &self,
        master_id: u64,
        fields: &Fields,
    ) -> Result<Answer, Answer> {
        let refused = |why: String| {
            let mut answer = Answer::failure(400, "Package not deleted", "Something went wrong");
            answer.body["reason"] = json!(why);
            answer
        };
        let class = self.existing_class(fields).await?.map_err(refused)?;
        // An unknown id is an error; a known one not assigned is the
        // original's 200 "Invalid package id" below.
        self.existing_master(master_id).await?.map_err(refused)?;
        let uninstall = fields
            .flag(&["uninstall"])
            .map_err(|why| Answer::field("uninstall", &why))?
            .unwrap_or(false);
        let id = model::assign_doc_id(master_id, &class);
        let written = if uninstall {
            let changed = self
                .modify(&id, |doc| {
                    if doc.get("state").and_then(Value::as_str) == Some("uninstall") {
                        return Ok(false);
                    }
                    doc.insert("state".into(), json!("uninstall"));
                    Ok(true)
                })
                .await?;
            (changed == Some(true)).then(|| Written::Doc(id.clone()))
        } else {
            self.delete_doc(&id).await?.map(|rev| Written::Deleted {
                id: id.clone(),
                rev,
            })
        };
        let Some(written) = written else {
            return Ok(Answer::message(200, "Invalid package id"));
        };
        let mut fields = Self::assignment_fields(master_id, &class);
        fields["uninstall"] = json!(uninstall);
        self.commit(written, kind::UNASSIGN, fields).await?;
        Ok(Answer::message(200, "Package deleted"))
    }

    /// Deletes a document, returning the deletion's revision; `None` when
    /// it did not exist.
    async fn delete_doc(&self, id: &str) -> Result<Option<String>, Answer> {
        for _ in 0..32 {
            let Some(doc) = self
                .config_db
                .get(id)
                .await
                .map_err(|err| Answer::unavailable(&err))?
            else {
                return Ok(None);
            };
            let rev = doc.get("_rev").and_then(Value::as_str).unwrap_or_default();
            match self.config_db.delete(id, rev).await {
                Ok(rev) => return Ok(Some(rev)),
                Err(err) if err.is(ErrorKind::Conflict) => continue,
                Err(err) if err.is(ErrorKind::NotFound) => return Ok(None),
                Err(err) => return Err(Answer::unavailable(&err)),
            }
        }
        Err(Answer::failure(
            503,
            "Something went wrong",
            format!("{id} keeps changing; try again"),
        ))
    }
}

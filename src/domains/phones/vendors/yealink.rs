//! Yealink (T2x/T4x/T5x): `y0000000000XX.cfg` per model, `<mac>.cfg` per
//! device, `key = value` text starting with `#!version:1.0.0.1`.

use serde_json::{Value, json};

use super::{FileClass, FileSpec, ModelRef, Vendor};
use crate::domains::phones::mac::Mac;

pub struct Yealink;

pub const TEMPLATES: &[(&str, &str)] = &[
    ("yealink/common.cfg.hbs", "#!version:1.0.0.1\n"),
    (
        "yealink/device.cfg.hbs",
        "#!version:1.0.0.1\n{{#each lines}}account.{{line}}.enable = 1\naccount.{{line}}.user_name = {{username}}\naccount.{{line}}.password = {{password}}\naccount.{{line}}.sip_server.1.address = {{realm}}\n{{/each}}",
    ),
];

impl Vendor for Yealink {
    fn brand(&self) -> &'static str {
        "yealink"
    }

    fn files(&self, model: &ModelRef<'_>, mac: &Mac) -> Vec<FileSpec> {
        let id = model
            .meta
            .get("file_id")
            .and_then(Value::as_str)
            .unwrap_or("00");
        vec![
            FileSpec {
                name: format!("y0000000000{id}.cfg"),
                class: FileClass::Common,
                template: "yealink/common.cfg.hbs",
                content_type: "text/plain; charset=utf-8",
            },
            FileSpec {
                name: format!("{mac}.cfg"),
                class: FileClass::Device,
                template: "yealink/device.cfg.hbs",
                content_type: "text/plain; charset=utf-8",
            },
        ]
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        let stem = file.strip_suffix(".cfg")?;
        (stem.len() == 12).then(|| Mac::parse(stem)).flatten()
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        user_agent.to_ascii_lowercase().starts_with("yealink")
    }

    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac> {
        if !self.recognises_user_agent(user_agent) {
            return None;
        }
        user_agent.split_whitespace().rev().find_map(Mac::parse)
    }
}

pub fn catalogue() -> Value {
    json!({
        "description": "Yealink SIP phones",
        "schema": {"type": "object", "properties": {}},
        "families": {
            "t4x": {
                "description": "T4x series",
                "models": {
                    "t46s": {"description": "SIP-T46S", "meta": {"file_id": "66"}}
                }
            }
        }
    })
}

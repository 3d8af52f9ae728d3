//! A realistic render context for any catalogue model: what the golden
//! tests, the property tests and the render benchmark render. Two SIP
//! lines with display names that need escaping, the seed's department
//! examples (a phone book, codecs an account restricts, a ringtone) and
//! BLF/speed-dial keys. Pure.

use serde_json::{Value, json};

use super::catalogue::{EffectiveModel, defaults, merge};
use crate::domains::phones::mac::Mac;

/// The account-level configuration: cross-vendor keys plus a few native
/// parameters of every vendor (only the unit's own brand is used).
pub fn account_config() -> Value {
    json!({
        "codecs": ["g722", "pcma", "pcmu"],
        "time": {"ntp_server": "ntp.acme.example.net"},
        "phone_book": {
            "name": "Sales & Support",
            "url": "https://pb.acme.example.net/sales.xml",
            "entries": [
                {"name": "Reception", "number": "100"},
                {"name": "Ana & Bo <Sales>", "number": "101"}
            ]
        },
        "keys": [
            {"key": 3, "type": "blf", "value": "1002", "label": "Bob"},
            {"key": 4, "type": "speed_dial", "value": "+15551230000", "label": "Mobile"}
        ],
        "yealink": {
            "local_time": {"time_zone": "+1", "time_zone_name": "Germany(Berlin)"},
            "phone_setting": {"ring_type": "Ring3.wav"},
            "static": {"network": {"vlan": {"internet_port_enable": 1, "internet_port_vid": 20, "internet_port_priority": 5}}}
        },
        "polycom": {
            "tcpIpApp": {"sntp": {"gmtOffset": 3600}},
            "np": {"normal": {"ringing": {"calls": {"tonePattern": "ringer5"}}}},
            "device.set": 1,
            "device.net.vlanId": 20,
            "device.net.vlanId.set": 1
        },
        "cisco": {
            "Time_Zone": "GMT+01:00",
            "Enable_VLAN": true,
            "VLAN_ID": 20,
            "Default_Ring_1_": "3",
            "Resync_Periodic": 3600
        },
        "grandstream": {
            "P64": "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00",
            "P51": 20,
            "P87": 5,
            "P104": 1
        },
        "snom": {
            "timezone": "GER+1",
            "vlan_id": 20,
            "vlan_qos": 5,
            "user_ringer": {"1": "Ringer3"},
            "language": {"value": "Deutsch", "perm": "RW"}
        },
        "fanvil": {
            "PHONE FEATURE MODULE": {
                "Ring Type": "Type 3.wav",
                "--DateTime Config--": {"Time Zone": 4, "Time Zone Name": "UTC+1"}
            },
            "QOS CONFIG MODULE": {"Enable VLAN": 1, "VLAN ID": 20, "Voice Priority": 5}
        }
    })
}

/// The merged configuration the core would hand over: catalogue defaults
/// under the account configuration.
pub fn config(model: &EffectiveModel) -> Value {
    let mut config = defaults(model.schema());
    merge(&mut config, &account_config());
    config
}

fn model_context(model: &EffectiveModel, config: Value) -> Value {
    json!({
        "account": {"id": "4a5b6c7d8e9f00112233445566778899", "name": "Acme Sales", "realm": "acme.sip.example.net"},
        "model": {
            "brand": model.brand,
            "family": model.family,
            "model": model.model,
            "meta": model.meta(),
        },
        "config": config,
        "files": {"common": [], "device": []},
    })
}

/// The context of a model-common file of `model`.
pub fn common_context(model: &EffectiveModel) -> Value {
    model_context(model, config(model))
}

/// The context of a per-device file of `model` for the unit with `mac`.
pub fn device_context(model: &EffectiveModel, mac: &Mac) -> Value {
    let mut context = model_context(model, config(model));
    context["unit"] = json!({"id": "unit-0001", "name": "Front desk"});
    context["mac"] = json!({"lower": mac.lower(), "upper": mac.upper(), "colons": mac.colons()});
    context["lines"] = json!([
        {
            "line": 1,
            "label": "Alice",
            "display_name": "Alice O'Neil & Co <Sales>",
            "username": "1001",
            "password": "s3cr3t&<pw>\"1",
            "realm": "acme.sip.example.net"
        },
        {
            "line": 2,
            "label": "Zoë",
            "display_name": "Zoë Müller",
            "username": "1009",
            "password": "9-p@ss",
            "realm": "acme.sip.example.net"
        }
    ]);
    context
}

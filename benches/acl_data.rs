//! The ACL benchmarks' data (`benches/acls.rs`, the ACL part of
//! `benches/domains_daemon.rs`): auth-by-ip devices, resources with an IP and
//! a hostname gateway, and the addresses each hostname resolves to. Included
//! with `#[path = "acl_data.rs"] mod acl_data;`.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// How many distinct gateway hostnames the resources use.
pub const HOSTNAMES: usize = 2_000;

pub fn device(n: usize) -> Value {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + n as u32 + 1);
    json!({
        "_id": format!("{:032x}", n * 7919 + 1),
        "pvt_type": "device", "pvt_account_id": format!("{:032x}", n % 500),
        "name": format!("device {n}"), "device_type": "sip_device", "enabled": true,
        "sip": { "method": "ip", "ip": ip.to_string(), "username": format!("dev{n}") }
    })
}

pub fn resource(n: usize) -> Value {
    let ip = Ipv4Addr::from(0xac10_0000u32 + n as u32 + 1);
    json!({
        "_id": format!("{:032x}", 0xffff_0000usize + n),
        "pvt_type": "resource", "pvt_account_id": format!("{:032x}", n % 500),
        "name": format!("carrier {n}"), "enabled": true, "weight_cost": n % 100,
        "gateways": [
            { "server": ip.to_string(), "enabled": true, "endpoint_type": "sip" },
            { "server": format!("gw{}.bench.test", n % HOSTNAMES), "enabled": true, "endpoint_type": "sip" }
        ]
    })
}

pub fn host_addresses(h: usize) -> [Ipv4Addr; 2] {
    let base = 0xc0a8_0000u32 + 2 * h as u32;
    [Ipv4Addr::from(base), Ipv4Addr::from(base + 1)]
}

//! The edge store's keys (`edge.*`): download URL signing, trusted proxies
//! and the proxy policy for telemetry, authentication, limits, report
//! formatting. All of them are re-read on SIGHUP.

use std::time::Duration;

use ipnet::IpNet;

use super::Secret;
use super::reader::Reader;

/// `edge.proxy_policy`: what a telemetry report through an edge that may
/// not proxy gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyPolicyName {
    Off,
    Log,
    Enforce,
}

/// `edge.device_auth`: whether edges must present their registry token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAuth {
    /// Never checked (the seed's behaviour).
    Off,
    /// Checked for edges that have a token in the registry.
    Optional,
    /// Every edge must have a token and present it.
    Required,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// HMAC key of download URLs; unset = a random key per process (URLs
    /// then work only on the instance that made them, until it restarts).
    pub download_key: Option<Secret>,
    pub download_ttl: Duration,
    /// Base of the download URLs (`https://prov.example.net`); unset = the
    /// request's `Host`.
    pub public_url: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub proxy_policy: ProxyPolicyName,
    /// Edge types that may proxy telemetry.
    pub proxy_types: Vec<String>,
    /// Refuse telemetry without `X-Forwarded-For` (the seed says it is required).
    pub require_forwarded_for: bool,
    /// Management endpoints need this bearer token, or basic auth with the
    /// username and password below; none set = open (the seed's behaviour).
    pub admin_token: Option<Secret>,
    pub admin_username: Option<String>,
    pub admin_password: Option<Secret>,
    pub device_auth: DeviceAuth,
    /// Largest request body of an upload (template versions, master packages).
    pub max_upload_bytes: usize,
    /// Memory for per-edge packages built on request.
    pub package_cache_bytes: usize,
    pub report_page_size: usize,
    /// IANA name of the time zone report times are shown in.
    pub report_timezone: String,
    /// Edge ids the API accepts (a regular expression).
    pub edge_id_pattern: String,
    /// How long a management write waits for its effect to be served.
    pub write_wait: Duration,
    /// Versions kept per edge in the telemetry summary.
    pub report_versions_kept: usize,
}

pub(super) fn read(r: &mut Reader<'_>) -> EdgeConfig {
    let secret = |r: &mut Reader<'_>, key: &str| {
        r.opt_string(key).filter(|s| !s.is_empty()).map(Secret::new)
    };
    let download_key = secret(r, "edge.download_key");
    if download_key.as_ref().is_some_and(|k| k.expose().len() < 16) {
        r.error("edge.download_key", "must be at least 16 characters");
    }
    let public_url = r
        .opt_string("edge.public_url")
        .filter(|s| !s.is_empty())
        .map(|u| u.trim_end_matches('/').to_string());
    if let Some(url) = &public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        r.error("edge.public_url", format!("{url:?} is not an http(s) URL"));
    }
    let trusted_proxies = read_proxies(r);
    let proxy_policy = match r.choice("edge.proxy_policy", "log", &["off", "log", "enforce"]) {
        "off" => ProxyPolicyName::Off,
        "enforce" => ProxyPolicyName::Enforce,
        _ => ProxyPolicyName::Log,
    };
    let proxy_types: Vec<String> = r
        .string("edge.proxy_types", "static,mid")
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let device_auth = match r.choice("edge.device_auth", "off", &["off", "optional", "required"]) {
        "optional" => DeviceAuth::Optional,
        "required" => DeviceAuth::Required,
        _ => DeviceAuth::Off,
    };
    let admin_token = secret(r, "edge.admin_token");
    let admin_username = r
        .opt_string("edge.admin_username")
        .filter(|s| !s.is_empty());
    let admin_password = secret(r, "edge.admin_password");
    if admin_username.is_some() != admin_password.is_some() {
        r.error(
            "edge.admin_username",
            "edge.admin_username and edge.admin_password go together",
        );
    }
    let report_timezone = r.string("edge.report_timezone", "UTC");
    if let Err(err) = jiff::tz::TimeZone::get(&report_timezone) {
        r.error(
            "edge.report_timezone",
            format!("{report_timezone:?} is not a known time zone: {err}"),
        );
    }
    let edge_id_pattern = r.string("edge.edge_id_pattern", "^[0-9a-f]{6}$");
    if let Err(err) = regex_lite::Regex::new(&edge_id_pattern) {
        r.error(
            "edge.edge_id_pattern",
            format!("{edge_id_pattern:?} is not a regular expression: {err}"),
        );
    }
    EdgeConfig {
        download_key,
        download_ttl: Duration::from_secs(r.int("edge.download_ttl_secs", 3_600, 1, 604_800)),
        public_url,
        trusted_proxies,
        proxy_policy,
        proxy_types,
        require_forwarded_for: r.bool("edge.require_forwarded_for", false),
        admin_token,
        admin_username,
        admin_password,
        device_auth,
        max_upload_bytes: r.int("edge.max_upload_bytes", 4 << 20, 1_024, 256 << 20) as usize,
        package_cache_bytes: r.int("edge.package_cache_bytes", 64 << 20, 0, 16 << 30) as usize,
        report_page_size: r.int("edge.report_page_size", 20, 1, 1_000) as usize,
        report_timezone,
        edge_id_pattern,
        write_wait: r.millis("edge.write_wait_ms", 3_000, 0, 60_000),
        report_versions_kept: r.int("edge.report_versions_kept", 50, 1, 10_000) as usize,
    }
}

fn read_proxies(r: &mut Reader<'_>) -> Vec<IpNet> {
    let text = r.opt_string("edge.trusted_proxies").unwrap_or_default();
    let mut nets = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = part
            .parse::<IpNet>()
            .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => r.error(
                "edge.trusted_proxies",
                format!("{part:?} is not an address or CIDR network"),
            ),
        }
    }
    nets
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LoadError};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_and_every_problem_at_once() {
        let config = Config::from_toml("", &no_env).unwrap().edge;
        assert_eq!(config.proxy_types, ["static", "mid"]);
        assert_eq!(config.report_page_size, 20);
        assert!(config.trusted_proxies.is_empty() && config.admin_token.is_none());
        let text = r#"
            [edge]
            trusted_proxies = "10.0.0.0/8, 192.0.2.1, nonsense"
            proxy_policy = "strict"
            device_auth = "sometimes"
            admin_username = "ops"
            report_timezone = "Mars/Olympus"
            edge_id_pattern = "(["
            download_key = "short"
            public_url = "ftp://x"
        "#;
        let Err(LoadError::Invalid(errors)) = Config::from_toml(text, &no_env) else {
            panic!("expected errors");
        };
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "edge.trusted_proxies",
            "edge.proxy_policy",
            "edge.device_auth",
            "edge.admin_username",
            "edge.report_timezone",
            "edge.edge_id_pattern",
            "edge.download_key",
            "edge.public_url",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let env =
            |name: &str| (name == "CALDERA_EDGE_TRUSTED_PROXIES").then(|| "127.0.0.1".to_string());
        let config = Config::from_toml("", &env).unwrap().edge;
        assert_eq!(
            config.trusted_proxies,
            ["127.0.0.1/32".parse::<ipnet::IpNet>().unwrap()]
        );
    }
}

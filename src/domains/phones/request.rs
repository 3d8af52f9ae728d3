//! What a phone's request asks for, read from its request line and headers:
//! the account (path prefix or `Host`), the file, the MACs in the file name
//! and in the User-Agent. Pure.
//!
//! Paths are matched against a strict grammar, never used to reach a file
//! system: one segment (`/<file>`) or two (`/<account id>/<file>`), each
//! percent-decoded once and then limited to `[A-Za-z0-9._~+-]` (no slash,
//! no backslash, no leading dot), so encoded or double-encoded traversal
//! simply does not parse.

use super::mac::Mac;
use super::vendors;

/// The longest file name a phone asks for.
const MAX_FILE: usize = 128;
/// The longest account id accepted as a path prefix.
const MAX_ACCOUNT: usize = 64;

/// A parsed request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `/{account_id}/` prefix, when given.
    pub account: Option<String>,
    pub file: String,
}

fn decode_segment(raw: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    let ok = !decoded.is_empty()
        && !decoded.starts_with('.')
        && decoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~' | '+'));
    ok.then(|| decoded.into_owned())
}

/// The target of `path` (without the query), or `None` when it is not a
/// phone file path.
pub fn parse_target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (account, file) = match segments.as_slice() {
        [file] => (None, *file),
        [account, file] => (Some(*account), *file),
        _ => return None,
    };
    let file = decode_segment(file).filter(|f| f.len() <= MAX_FILE)?;
    let account = match account {
        None => None,
        Some(raw) => {
            let id = decode_segment(raw).filter(|a| {
                a.len() <= MAX_ACCOUNT
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            })?;
            Some(id)
        }
    };
    Some(Target { account, file })
}

/// The realm a `Host` header names: port stripped, lower case, no trailing dot.
pub fn realm_of_host(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[addr]` or `[addr]:port`.
        rest.split(']').next()?
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => host,
        }
    };
    super::model::normalise_realm(name)
}

/// The MAC a vendor's per-device file grammar finds in `file`.
pub fn mac_in_file(file: &str) -> Option<Mac> {
    vendors::all().iter().find_map(|v| v.mac_in_file(file))
}

/// The vendors that recognise a User-Agent.
pub fn user_agent_vendors(user_agent: &str) -> Vec<&'static str> {
    vendors::all()
        .iter()
        .filter(|v| v.recognises_user_agent(user_agent))
        .map(|v| v.brand())
        .collect()
}

/// The MAC in a User-Agent, from the first vendor that recognises it and
/// finds one.
pub fn mac_in_user_agent(user_agent: &str) -> Option<Mac> {
    vendors::all()
        .iter()
        .filter(|v| v.recognises_user_agent(user_agent))
        .find_map(|v| v.mac_in_user_agent(user_agent))
}

/// The MAC of a Polycom-style log upload name, `<mac>-<name>.log`.
pub fn mac_of_log_upload(file: &str) -> Option<Mac> {
    let stem = file.strip_suffix(".log")?;
    let (mac, name) = stem.split_once('-')?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    (mac.len() == 12 && name_ok)
        .then(|| Mac::parse(mac))
        .flatten()
}

/// A string safe to put in a log line: control characters replaced, cut
/// at `max` characters.
pub fn loggable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_paths_parse_and_hostile_ones_do_not() {
        assert_eq!(
            parse_target("/805ec0123456.cfg"),
            Some(Target {
                account: None,
                file: "805ec0123456.cfg".into()
            })
        );
        assert_eq!(
            parse_target("/002e3a6fe532d90943e6fcaf08e1a408/001565000000.cfg"),
            Some(Target {
                account: Some("002e3a6fe532d90943e6fcaf08e1a408".into()),
                file: "001565000000.cfg".into()
            })
        );
        assert_eq!(
            parse_target("/y%3000000000066.cfg").unwrap().file,
            "y000000000066.cfg"
        );
        for hostile in [
            "/..%2f..%2fetc%2fpasswd",
            "/805ec0123456.cfg/../../x",
            "/../etc/passwd",
            "/%2e%2e/secret",
            "/a/b/c",
            "/",
            "",
            "805ec0123456.cfg",
            "/.htaccess",
            "/%252e%252e%252fetc",
            "/a%5c..%5cb",
            "/file%00.cfg",
            "/caf%C3%A9.cfg",
            "/%ff.cfg",
            "//805ec0123456.cfg",
            "/acct/",
            "/ac.ct/x.cfg",
        ] {
            assert_eq!(parse_target(hostile), None, "{hostile}");
        }
        assert_eq!(parse_target(&format!("/{}", "a".repeat(129))), None);
    }

    #[test]
    fn hosts_become_realms() {
        assert_eq!(
            realm_of_host("ACME.sip.example.net:8080").as_deref(),
            Some("acme.sip.example.net")
        );
        assert_eq!(
            realm_of_host("acme.sip.example.net.").as_deref(),
            Some("acme.sip.example.net")
        );
        assert_eq!(realm_of_host("192.0.2.1:80").as_deref(), Some("192.0.2.1"));
        assert_eq!(realm_of_host("[2001:db8::1]:80"), None);
        assert_eq!(realm_of_host("a b"), None);
        assert_eq!(realm_of_host("host:port"), None);
    }

    #[test]
    fn log_uploads_carry_the_mac() {
        assert_eq!(
            mac_of_log_upload("0004f282e824-boot.log").unwrap().lower(),
            "0004f282e824"
        );
        assert_eq!(
            mac_of_log_upload("0004F282E824-app.log").unwrap().lower(),
            "0004f282e824"
        );
        assert_eq!(mac_of_log_upload("0004f282e824.log"), None);
        assert_eq!(mac_of_log_upload("0004f282e82-boot.log"), None);
        assert_eq!(mac_of_log_upload("0004f282e824-boot.cfg"), None);
    }

    #[test]
    fn the_minimal_yealink_finds_macs() {
        let ua = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56";
        assert_eq!(mac_in_user_agent(ua).unwrap().lower(), "805ec0123456");
        assert_eq!(user_agent_vendors(ua), ["yealink"]);
        assert!(user_agent_vendors("curl/8.5.0").is_empty());
        assert_eq!(
            mac_in_file("805ec0123456.cfg").unwrap().lower(),
            "805ec0123456"
        );
        assert_eq!(mac_in_file("y000000000066.cfg"), None);
        assert_eq!(loggable("a\nb", 10), "a\u{fffd}b");
        assert_eq!(loggable("abcdef", 3), "abc…");
    }
}

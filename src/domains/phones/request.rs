//! What a phone's request asks for, read from its request line and headers:
//! the account (path prefix or `Host`), the file, the MACs in the file name
//! and in the User-Agent. Pure.
//!
//! Paths are matched against a strict grammar, never used to reach a file
//! system: one segment (`/<file>`) or two (`/<account id>/<file>`), each
//! percent-decoded once and then limited to `[A-Za-z0-9._~+-]` (no slash,
//! no backslash, no leading dot), so encoded or double-encoded traversal
//! simply does not parse.

use std::borrow::Cow;

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

/// The MACs the vendors' per-device grammars read in `file`, each once
/// (names several vendors claim read the same MAC; which vendor it is
/// depends on the unit that owns the MAC, decided by the caller).
pub fn macs_in_file(file: &str) -> Vec<Mac> {
    let mut macs: Vec<Mac> = Vec::new();
    for (_, mac) in vendors::vendors_claiming(file) {
        if !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    macs
}

/// The MAC of an upload name, `<mac>-<name>` (Polycom's logs, local
/// changes, contacts, call lists). Whether the unit's vendor takes the
/// upload is its vendor's call (`Vendor::accepts_upload`).
pub fn mac_of_upload(file: &str) -> Option<Mac> {
    let (mac, name) = file.split_once('-')?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (mac.len() == 12 && name_ok)
        .then(|| Mac::parse(mac))
        .flatten()
}

/// What a User-Agent says: whose phone it is, its MAC and its model, when
/// it carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    pub brand: Option<&'static str>,
    pub mac: Option<Mac>,
    pub model: Option<String>,
}

impl Agent {
    pub fn of(user_agent: &str) -> Agent {
        let Some(vendor) = vendors::vendor_of_user_agent(user_agent) else {
            return Agent::default();
        };
        Agent {
            brand: Some(vendor.brand()),
            mac: vendor.mac_in_user_agent(user_agent),
            model: vendor.model_in_user_agent(user_agent),
        }
    }
}

/// A string safe to put in a log line: control characters replaced, cut
/// at `max` characters (borrowed when it already is).
pub fn loggable(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    Cow::Owned(out)
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
    fn uploads_carry_the_mac() {
        assert_eq!(
            mac_of_upload("0004f282e824-boot.log").unwrap().lower(),
            "0004f282e824"
        );
        assert_eq!(
            mac_of_upload("0004F282E824-app.log").unwrap().lower(),
            "0004f282e824"
        );
        assert_eq!(
            mac_of_upload("0004f282e824-calls.xml").unwrap().lower(),
            "0004f282e824"
        );
        assert_eq!(mac_of_upload("0004f282e824.log"), None);
        assert_eq!(mac_of_upload("0004f282e82-boot.log"), None);
        assert_eq!(mac_of_upload("0004f282e824-"), None);
    }

    #[test]
    fn user_agents_and_file_names_give_vendor_mac_and_model() {
        let ua = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56";
        let agent = Agent::of(ua);
        assert_eq!(agent.brand, Some("yealink"));
        assert_eq!(agent.mac.unwrap().lower(), "805ec0123456");
        assert_eq!(agent.model.as_deref(), Some("t46s"));
        assert_eq!(Agent::of("curl/8.5.0"), Agent::default());
        let polycom = Agent::of("PolycomVVX-VVX_410-UA/5.9.7.4477");
        assert_eq!(polycom.brand, Some("polycom"));
        assert_eq!(polycom.model.as_deref(), Some("vvx410"));
        // Shared by Yealink, Polycom and Fanvil: one MAC.
        let macs = macs_in_file("805ec0123456.cfg");
        assert_eq!(macs.len(), 1);
        assert_eq!(macs[0].lower(), "805ec0123456");
        assert!(macs_in_file("y000000000066.cfg").is_empty());
        assert!(macs_in_file("000000000000.cfg").is_empty());
        assert_eq!(loggable("a\nb", 10), "a\u{fffd}b");
        assert_eq!(loggable("abcdef", 3), "abc…");
        // Clean and short enough: the text itself, not a copy.
        assert!(matches!(
            loggable("Yealink SIP-T46S", 200),
            Cow::Borrowed(_)
        ));
        assert!(matches!(loggable("é\u{7f}", 200), Cow::Owned(_)));
    }
}

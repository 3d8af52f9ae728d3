//! File-name and User-Agent grammar pieces every vendor shares: exact
//! 12-hex-digit MACs in a fixed letter case, prefix/suffix stripping, and
//! the length limits that keep hostile input cheap. Pure.

use crate::domains::phones::mac::Mac;

/// No phone asks for a longer bare file name; anything longer is refused
/// before any parsing.
pub const MAX_FILE_NAME: usize = 64;

/// Real User-Agents are under 200 bytes; a longer one is not a phone we
/// know, and is refused before any parsing.
pub const MAX_USER_AGENT: usize = 512;

/// The letter case a vendor writes MACs in, in file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Lower,
    Upper,
}

/// `text` as exactly 12 hex digits of `case` (digits are in both cases).
/// `000000000000` is never a device: it is Polycom's shared master file and
/// the placeholder some firmware requests carry.
pub fn hex12(text: &str, case: Case) -> Option<Mac> {
    let digits_ok = text.len() == 12
        && text != "000000000000"
        && text.bytes().all(|b| match case {
            Case::Lower => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            Case::Upper => b.is_ascii_digit() || (b'A'..=b'F').contains(&b),
        });
    digits_ok.then(|| Mac::parse(text)).flatten()
}

/// The MAC in `file` when it is exactly `prefix` + 12 hex digits of `case`
/// + `suffix`.
pub fn mac_between(file: &str, prefix: &str, suffix: &str, case: Case) -> Option<Mac> {
    if file.len() > MAX_FILE_NAME {
        return None;
    }
    let middle = file.strip_prefix(prefix)?.strip_suffix(suffix)?;
    hex12(middle, case)
}

/// Whether `text` is exactly 12 hex digits in either case (for User-Agent
/// tokens, where vendors are less consistent than in file names).
pub fn any_hex12(text: &str) -> Option<Mac> {
    (text.len() == 12 && text != "000000000000" && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Mac::parse(text))
        .flatten()
}

/// The User-Agent if it is short enough to be a phone's, trimmed.
pub fn bounded(user_agent: &str) -> Option<&str> {
    (user_agent.len() <= MAX_USER_AGENT).then(|| user_agent.trim())
}

/// Whether `text` starts with `prefix`, ignoring ASCII case.
pub fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex12_is_exact_in_length_digits_and_case() {
        assert!(hex12("805ec0123456", Case::Lower).is_some());
        assert!(hex12("805EC0123456", Case::Lower).is_none());
        assert!(hex12("805EC0123456", Case::Upper).is_some());
        assert!(hex12("805ec0123456", Case::Upper).is_none());
        assert!(hex12("001122334455", Case::Upper).is_some());
        assert!(hex12("001122334455", Case::Lower).is_some());
        for bad in [
            "805ec012345",
            "805ec01234567",
            "805ec012345g",
            "80:5e:c0:12:34",
            "",
            "000000000000",
        ] {
            assert!(hex12(bad, Case::Lower).is_none(), "{bad}");
        }
    }

    #[test]
    fn mac_between_needs_the_whole_name() {
        let mac = mac_between("spa0002fdff2103.xml", "spa", ".xml", Case::Lower);
        assert_eq!(mac.unwrap().lower(), "0002fdff2103");
        assert!(mac_between("xspa0002fdff2103.xml", "spa", ".xml", Case::Lower).is_none());
        assert!(mac_between("spa0002fdff2103.xml.bak", "spa", ".xml", Case::Lower).is_none());
        let long = format!("spa0002fdff2103{}.xml", "x".repeat(100));
        assert!(mac_between(&long, "spa", ".xml", Case::Lower).is_none());
    }

    #[test]
    fn bounded_refuses_absurd_user_agents() {
        assert_eq!(bounded("  Yealink  "), Some("Yealink"));
        assert_eq!(bounded(&"a".repeat(MAX_USER_AGENT + 1)), None);
    }
}

//! MAC addresses as phones and operators write them: any common notation in
//! (`00:15:65:4a:a9:37`, `00-15-65-4A-A9-37`, `0015.654a.a937`,
//! `0015654AA937`), one canonical value out.

use std::fmt;

/// A 48-bit MAC address. `Display` is the canonical form: 12 lower-case hex
/// digits, which is how units store it and how most vendors name files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl Mac {
    /// Parses any common notation: 12 hex digits, optionally grouped by `:`
    /// or `-` (pairs) or `.` (quads), case-insensitive. Anything else
    /// (wrong length, mixed separators, non-hex) is `None`.
    pub fn parse(text: &str) -> Option<Mac> {
        // Byte by byte, without allocating: the phones listener parses one
        // or two MACs per request.
        let text = text.trim().as_bytes();
        let (separator, group) = match text.iter().find(|b| !b.is_ascii_hexdigit()) {
            None => (None, 12),
            Some(&sep @ (b':' | b'-')) => (Some(sep), 2),
            Some(b'.') => (Some(b'.'), 4),
            Some(_) => return None,
        };
        let separators = 12 / group - 1;
        if text.len() != 12 + separators {
            return None;
        }
        let mut bytes = [0u8; 6];
        let mut digit = 0;
        for (i, &b) in text.iter().enumerate() {
            if separator.is_some() && (i + 1) % (group + 1) == 0 {
                if Some(b) != separator {
                    return None;
                }
                continue;
            }
            let value = (b as char).to_digit(16)? as u8;
            bytes[digit / 2] |= if digit % 2 == 0 { value << 4 } else { value };
            digit += 1;
        }
        Some(Mac(bytes))
    }

    /// 12 lower-case hex digits (`0015654aa937`).
    pub fn lower(&self) -> String {
        self.to_string()
    }

    /// 12 upper-case hex digits (`0015654AA937`).
    pub fn upper(&self) -> String {
        self.to_string().to_ascii_uppercase()
    }

    /// Lower-case pairs joined by colons (`00:15:65:4a:a9:37`).
    pub fn colons(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Mac;

    #[test]
    fn every_common_notation_gives_the_same_mac() {
        let canonical = Mac::parse("0015654aa937").unwrap();
        for text in [
            "00:15:65:4a:a9:37",
            "00-15-65-4A-A9-37",
            "0015.654a.a937",
            "0015654AA937",
            " 0015654aa937 ",
        ] {
            assert_eq!(Mac::parse(text), Some(canonical), "{text}");
        }
        assert_eq!(canonical.lower(), "0015654aa937");
        assert_eq!(canonical.upper(), "0015654AA937");
        assert_eq!(canonical.colons(), "00:15:65:4a:a9:37");
    }

    #[test]
    fn malformed_macs_are_refused() {
        for text in [
            "",
            "0015654aa93",
            "0015654aa9370",
            "0015654aa93g",
            "00:15:65:4a:a9-37",
            "00:15:65:4aa9:37",
            "001:5:65:4a:a9:37",
            "../etc/passwd",
            "０015654aa937",
            "00:15:65:4a:a9:3",
            "00:15:65:4a:a9:37:",
            "0015:654a:a937",
            "0015.654a.a93",
            "00.15.65.4a.a9.37",
            "00:15:65:4a:a9:é7",
        ] {
            assert_eq!(Mac::parse(text), None, "{text:?}");
        }
    }
}

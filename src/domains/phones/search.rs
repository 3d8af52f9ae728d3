//! Unit search for the console (`GET /v1/units?q=`): whether a unit
//! matches a query, by its id, name, MAC (any notation, or part of one) or
//! account (id or name). Pure; the shell walks its copy of `units` in id
//! order from the cursor and stops at the page's end.

use super::mac::Mac;

/// The most units a page lists, whatever the caller asks.
pub const MAX_LIMIT: usize = 200;

/// A parsed query: lower-case terms, every one of which must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
struct Term {
    text: String,
    /// The term as MAC hex digits (`80:5e:c0` → `805ec0`), when it is one.
    hex: Option<String>,
}

/// What a unit is matched by.
pub struct Candidate<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub mac: Option<&'a Mac>,
    pub account: Option<&'a str>,
    pub account_name: Option<&'a str>,
}

impl Query {
    pub fn parse(q: &str) -> Query {
        let terms = q
            .split_whitespace()
            .map(|t| {
                let text = t.to_lowercase();
                let digits: String = text.chars().filter(|c| !":-.".contains(*c)).collect();
                let hex = (digits.len() >= 2 && digits.chars().all(|c| c.is_ascii_hexdigit()))
                    .then_some(digits);
                Term { text, hex }
            })
            .collect();
        Query { terms }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, unit: &Candidate<'_>) -> bool {
        let mac = unit.mac.map(Mac::lower);
        self.terms.iter().all(|term| {
            let in_text =
                |s: Option<&str>| s.is_some_and(|s| s.to_lowercase().contains(&term.text));
            in_text(Some(unit.id))
                || in_text(unit.name)
                || in_text(unit.account)
                || in_text(unit.account_name)
                || term
                    .hex
                    .as_ref()
                    .is_some_and(|hex| mac.as_ref().is_some_and(|m| m.contains(hex.as_str())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit<'a>(mac: &'a Mac) -> Candidate<'a> {
        Candidate {
            id: "unit-acme-yealink",
            name: Some("Sales desk (Yealink T46S)"),
            mac: Some(mac),
            account: Some("6f2a1b3c"),
            account_name: Some("Acme Corp"),
        }
    }

    #[test]
    fn matches_by_every_field_and_needs_every_term() {
        let mac = Mac::parse("80:5e:c0:12:34:56").unwrap();
        let yes = [
            "",
            "SALES",
            "80:5E:C0",
            "805ec012",
            "5e-c0-12",
            "acme corp",
            "6f2a",
            "yealink desk",
        ];
        for q in yes {
            assert!(Query::parse(q).matches(&unit(&mac)), "{q}");
        }
        for q in ["globex", "80:5e:c0:99", "sales globex"] {
            assert!(!Query::parse(q).matches(&unit(&mac)), "{q}");
        }
    }
}

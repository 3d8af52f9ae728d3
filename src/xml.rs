//! XML text escaping, shared by every renderer that writes XML (phone
//! configuration files, FreeSWITCH's `acl.conf`).

/// Appends `text` as XML element content or attribute value: the five
/// special characters become entities, and the characters XML 1.0 cannot
/// carry (controls, U+FFFE, U+FFFF) are dropped — no setting needs them, and
/// keeping one would make the whole document unreadable to its consumer.
pub fn push_escaped(out: &mut String, text: &str) {
    if !text.contains(['&', '<', '>', '"', '\'']) && !text.chars().any(unrepresentable) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if unrepresentable(c) => {}
            c => out.push(c),
        }
    }
}

/// `text` escaped as `push_escaped` does.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

fn unrepresentable(c: char) -> bool {
    c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_becomes_entities_and_controls_are_dropped() {
        assert_eq!(
            escape("A&B <x> \"q\" 'a'\r\n\u{0}z\u{FFFE}"),
            "A&amp;B &lt;x&gt; &quot;q&quot; &apos;a&apos;z"
        );
        assert_eq!(escape("Zoë 東京"), "Zoë 東京");
        let mut out = String::from("<a>");
        push_escaped(&mut out, "plain");
        assert_eq!(out, "<a>plain");
    }
}

//! Secrets masked in a rendered phone file shown to people (the console's
//! file view, `GET /v1/units/{id}/files/{file}?masked=true`): the value of
//! every parameter whose name the unit's vendor says holds a secret, in the
//! three shapes the vendors' formats use — `<Name …>value</Name>` elements,
//! `name="value"` attributes and `name = value` / `name: value` lines.
//! Pure; a masked file is for reading, never served to a phone.

use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What a masked value reads as.
pub const MASK: &str = "••••••";

static ELEMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"<([A-Za-z_][\w.:-]*)([^<>]*)>([^<]+)</([A-Za-z_][\w.:-]*)>").expect("valid")
});
static ATTRIBUTE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"([A-Za-z_][\w.:-]*)(\s*=\s*)"([^"]*)""#).expect("valid"));
static LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^(\s*)([^\s<>=:#;][^<>=:\n]*?)(\s*[=:]\s*)([^\r\n]*)$").expect("valid")
});

/// `body` with the value of every secret-named parameter replaced by `MASK`.
pub fn mask_secrets(body: &str, names_secret: impl Fn(&str) -> bool) -> String {
    let body = ELEMENT.replace_all(body, |c: &Captures<'_>| {
        if c[1] == c[4] && names_secret(&c[1]) && !c[3].trim().is_empty() {
            format!("<{}{}>{MASK}</{}>", &c[1], &c[2], &c[4])
        } else {
            c[0].to_string()
        }
    });
    let body = ATTRIBUTE.replace_all(&body, |c: &Captures<'_>| {
        if names_secret(&c[1]) && !c[3].is_empty() {
            format!("{}{}\"{MASK}\"", &c[1], &c[2])
        } else {
            c[0].to_string()
        }
    });
    LINE.replace_all(&body, |c: &Captures<'_>| {
        let value = c[4].trim();
        if names_secret(c[2].trim()) && !value.is_empty() && !value.starts_with('"') {
            format!("{}{}{}{MASK}", &c[1], &c[2], &c[3])
        } else {
            c[0].to_string()
        }
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::phones::vendors::params::names_a_secret;

    #[test]
    fn masks_each_format_and_keeps_the_rest() {
        let cases = [
            (
                "account.1.password = s3cret\naccount.1.user_name = alice\n",
                "account.1.password = ••••••\naccount.1.user_name = alice\n",
            ),
            (
                r#"<reg reg.1.auth.password="s3cret" reg.1.address="alice"/>"#,
                r#"<reg reg.1.auth.password="••••••" reg.1.address="alice"/>"#,
            ),
            (
                "<Password_1_ group=\"Ext_1\">s3cret</Password_1_><User_ID_1_>alice</User_ID_1_>",
                "<Password_1_ group=\"Ext_1\">••••••</Password_1_><User_ID_1_>alice</User_ID_1_>",
            ),
            (
                "SIP1 Register Pswd   :s3cret\nSIP1 Register User   :alice",
                "SIP1 Register Pswd   :••••••\nSIP1 Register User   :alice",
            ),
            ("account.1.password =\n", "account.1.password =\n"),
        ];
        for (body, want) in cases {
            assert_eq!(mask_secrets(body, names_a_secret), want);
        }
    }
}

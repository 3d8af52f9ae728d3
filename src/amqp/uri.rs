//! `amqp.url`: parsing into lapin's `AMQPUri`, and the form that may be
//! logged (password hidden).

use std::str::FromStr;

use lapin::uri::AMQPUri;
use reqwest::Url;

/// Parses an `amqp://` or `amqps://` URL.
///
/// amq-protocol-uri 10.6 takes the host from `Url::domain()`, which is
/// `None` for an IP address, and then silently connects to `localhost`
/// instead; the host is therefore set again from the URL here.
///
/// # Errors
/// A reason that never repeats the URL (it may hold a password).
pub fn parse(text: &str) -> Result<AMQPUri, String> {
    let url = Url::parse(text).map_err(|err| format!("not a URL ({err})"))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(format!(
            "the scheme is {:?}, not amqp or amqps",
            url.scheme()
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut uri = AMQPUri::from_str(text).map_err(|err| {
        // The parser's messages may quote the URL: keep only the first words.
        let reason = err.split(':').next().unwrap_or("invalid").to_string();
        format!("not an AMQP URL ({reason})")
    })?;
    uri.authority.host = host;
    Ok(uri)
}

/// The URL without its password, for logs and error messages.
pub fn redacted(uri: &AMQPUri) -> String {
    let user = &uri.authority.userinfo.username;
    let host = if uri.authority.host.contains(':') {
        format!("[{}]", uri.authority.host)
    } else {
        uri.authority.host.clone()
    };
    let vhost =
        percent_encoding::utf8_percent_encode(&uri.vhost, percent_encoding::NON_ALPHANUMERIC);
    format!(
        "{}://{user}:***@{host}:{}/{vhost}",
        uri.scheme, uri.authority.port
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_host_is_kept() {
        let uri = parse("amqp://kazoo:s3cret@10.1.2.3:5673/%2f").unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.userinfo.password, "s3cret");
        let v6 = parse("amqp://[::1]:5672/kazoo").unwrap();
        assert_eq!(v6.authority.host, "::1");
        assert_eq!(redacted(&v6), "amqp://guest:***@[::1]:5672/kazoo");
    }

    #[test]
    fn the_redacted_form_hides_the_password() {
        let uri = parse("amqps://kazoo:s3cret@rabbit.example.net/%2f?heartbeat=5").unwrap();
        let shown = redacted(&uri);
        assert_eq!(shown, "amqps://kazoo:***@rabbit.example.net:5671/%2F");
        assert_eq!(uri.query.heartbeat, Some(5));
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for text in [
            "http://kazoo:s3cret@host/",
            "amqp://kazoo:s3cret@/",
            "not a url s3cret",
            "amqp://kazoo:s3cret@host/?heartbeat=lots",
        ] {
            let err = parse(text).unwrap_err();
            assert!(!err.contains("s3cret"), "{text} -> {err}");
        }
    }
}

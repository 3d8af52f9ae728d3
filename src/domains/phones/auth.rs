//! Per-device HTTP authentication of phone file requests: Digest (RFC 7616,
//! MD5 and SHA-256, `qop=auth` or RFC 2069 style without `qop`) and Basic
//! where allowed. Pure: the clock and the nonce salt are the caller's.
//!
//! Cache documents hold `HA1 = H(username:realm:password)` per algorithm,
//! never the password; Basic is checked by computing the MD5 HA1 of what
//! was presented. Nonces are stateless: a timestamp and a salt signed with
//! HMAC-SHA256 under a key, so any replica configured with the same key
//! accepts them, and an expired one is answered `stale=true` (the phone
//! retries at once with a fresh nonce, without asking its user).

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use md5::Md5;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn hash(self, text: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(text.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(text.as_bytes())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `H(username:realm:password)`.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&format!("{username}:{realm}:{password}"))
}

/// What the cache holds of a unit's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub username: String,
    pub realm: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    pub allow_basic: bool,
}

impl Stored {
    pub fn new(username: &str, realm: &str, password: &str, allow_basic: bool) -> Stored {
        Stored {
            username: username.to_string(),
            realm: realm.to_string(),
            ha1_md5: ha1(Algorithm::Md5, username, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, username, realm, password),
            allow_basic,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "username": self.username, "realm": self.realm, "ha1_md5": self.ha1_md5,
            "ha1_sha256": self.ha1_sha256, "allow_basic": self.allow_basic,
        })
    }

    pub fn from_json(value: &Value) -> Option<Stored> {
        let text = |name: &str| value.get(name)?.as_str().map(str::to_string);
        Some(Stored {
            username: text("username")?,
            realm: text("realm")?,
            ha1_md5: text("ha1_md5")?,
            ha1_sha256: text("ha1_sha256")?,
            allow_basic: value
                .get("allow_basic")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// The outcome of checking a request's `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// No (usable) credentials: challenge.
    Missing,
    /// Credentials that do not match.
    Refused,
    /// Right credentials on an expired nonce: challenge with `stale=true`.
    Stale,
}

/// The nonce key (HMAC-SHA256).
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceState {
    Fresh,
    Expired,
    Forged,
}

type HmacSha256 = Hmac<Sha256>;

impl NonceKey {
    /// A key from secret material (any length; it is hashed).
    pub fn new(secret: &[u8]) -> NonceKey {
        NonceKey {
            key: Sha256::digest(secret).into(),
        }
    }

    fn mac(&self, data: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// A nonce for `realm` issued at `now` (seconds).
    pub fn issue(&self, realm: &str, now: u64, salt: u64) -> String {
        let data = format!("{now:016x}{salt:016x}");
        let tag = self.mac(&format!("{data}:{realm}"));
        format!("{data}{tag}")
    }

    fn check(&self, nonce: &str, realm: &str, now: u64, ttl: u64) -> NonceState {
        if nonce.len() != 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return NonceState::Forged;
        }
        let (data, tag) = nonce.split_at(32);
        if !equal(
            tag.as_bytes(),
            self.mac(&format!("{data}:{realm}")).as_bytes(),
        ) {
            return NonceState::Forged;
        }
        let Ok(issued) = u64::from_str_radix(&data[..16], 16) else {
            return NonceState::Forged;
        };
        if issued > now.saturating_add(60) {
            NonceState::Forged
        } else if now.saturating_sub(issued) > ttl {
            NonceState::Expired
        } else {
            NonceState::Fresh
        }
    }
}

/// Constant-time equality (no early exit on the first difference).
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `WWW-Authenticate` values of a 401 for `stored` (SHA-256 first, as
/// RFC 7616 asks; then MD5 for older phones; Basic last when allowed).
pub fn challenges(stored: &Stored, nonce: &str, stale: bool) -> Vec<String> {
    let stale = if stale { ", stale=true" } else { "" };
    let realm = quote(&stored.realm);
    let mut out: Vec<String> = [Algorithm::Sha256, Algorithm::Md5]
        .iter()
        .map(|a| {
            format!(
                "Digest realm={realm}, qop=\"auth\", algorithm={}, nonce=\"{nonce}\"{stale}",
                a.name()
            )
        })
        .collect();
    if stored.allow_basic {
        out.push(format!("Basic realm={realm}, charset=\"UTF-8\""));
    }
    out
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What the request presents.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Presented {
    Basic { username: String, password: String },
    Digest(Vec<(String, String)>),
}

fn parse(header: &str) -> Option<Presented> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        return Some(Presented::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    if scheme.eq_ignore_ascii_case("digest") {
        return digest_params(rest).map(Presented::Digest);
    }
    None
}

/// `name=value` pairs, values quoted (with `\` escapes) or tokens.
fn digest_params(text: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(params);
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?),
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        if params.len() >= 32 || params.iter().any(|(n, _)| *n == name) {
            return None;
        }
        params.push((name, value));
    }
}

/// The request as Digest needs it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub uri: &'a str,
    pub authorization: Option<&'a str>,
}

/// Checks `request` against `stored`, at `now` (seconds), nonces valid for
/// `ttl` seconds.
pub fn verify(
    stored: &Stored,
    request: &Request<'_>,
    key: &NonceKey,
    now: u64,
    ttl: u64,
) -> Verdict {
    let Some(presented) = request.authorization.and_then(parse) else {
        return Verdict::Missing;
    };
    match presented {
        Presented::Basic { username, password } => {
            if !stored.allow_basic {
                return Verdict::Missing;
            }
            let given = ha1(Algorithm::Md5, &username, &stored.realm, &password);
            if username == stored.username && equal(given.as_bytes(), stored.ha1_md5.as_bytes()) {
                Verdict::Accepted
            } else {
                Verdict::Refused
            }
        }
        Presented::Digest(params) => verify_digest(stored, request, &params, key, now, ttl),
    }
}

fn verify_digest(
    stored: &Stored,
    request: &Request<'_>,
    params: &[(String, String)],
    key: &NonceKey,
    now: u64,
    ttl: u64,
) -> Verdict {
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
    ) else {
        return Verdict::Missing;
    };
    let algorithm = match get("algorithm").map(str::to_ascii_uppercase).as_deref() {
        None | Some("MD5") => Algorithm::Md5,
        Some("SHA-256") => Algorithm::Sha256,
        // Unknown (or the -sess variants, which need state): ask again.
        Some(_) => return Verdict::Missing,
    };
    if get("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Verdict::Refused;
    }
    let path = request.uri.split('?').next().unwrap_or(request.uri);
    if realm != stored.realm || (uri != request.uri && uri != path) {
        return Verdict::Refused;
    }
    let state = key.check(nonce, &stored.realm, now, ttl);
    if state == NonceState::Forged {
        return Verdict::Missing;
    }
    let ha1 = match algorithm {
        Algorithm::Md5 => &stored.ha1_md5,
        Algorithm::Sha256 => &stored.ha1_sha256,
    };
    let ha2 = algorithm.hash(&format!("{}:{uri}", request.method));
    let expected = match get("qop") {
        Some("auth") => {
            let (Some(nc), Some(cnonce)) = (get("nc"), get("cnonce")) else {
                return Verdict::Missing;
            };
            algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
        }
        None => algorithm.hash(&format!("{ha1}:{nonce}:{ha2}")),
        Some(_) => return Verdict::Missing,
    };
    let matches = username == stored.username
        && equal(
            expected.as_bytes(),
            response.to_ascii_lowercase().as_bytes(),
        );
    match (matches, state) {
        (false, _) => Verdict::Refused,
        (true, NonceState::Expired) => Verdict::Stale,
        (true, _) => Verdict::Accepted,
    }
}

/// The `Authorization` a phone sends with Digest (`qop=auth`, `nc=1`) in
/// answer to a challenge's nonce: the client side, for the integration
/// tests and the benchmark.
#[allow(clippy::too_many_arguments)]
pub fn client_authorization(
    algorithm: Algorithm,
    username: &str,
    password: &str,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> String {
    let ha1 = ha1(algorithm, username, realm, password);
    let ha2 = algorithm.hash(&format!("{method}:{uri}"));
    let response = algorithm.hash(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm={}, qop=auth, nc=00000001, cnonce=\"{cnonce}\", response=\"{response}\"",
        algorithm.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored::new("phone-1", "acme.example.net", "s3cret", true)
    }

    fn client_digest(
        algorithm: Algorithm,
        user: &str,
        password: &str,
        realm: &str,
        nonce: &str,
        method: &str,
        uri: &str,
    ) -> String {
        client_authorization(
            algorithm, user, password, realm, nonce, method, uri, "abcdef",
        )
    }

    fn check(header: Option<&str>, now: u64) -> Verdict {
        let request = Request {
            method: "GET",
            uri: "/805ec0123456.cfg",
            authorization: header,
        };
        verify(&stored(), &request, &NonceKey::new(b"k"), now, 300)
    }

    #[test]
    fn digest_md5_and_sha256_are_accepted_and_wrong_passwords_refused() {
        let key = NonceKey::new(b"k");
        let nonce = key.issue("acme.example.net", 1000, 42);
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let good = client_digest(
                algorithm,
                "phone-1",
                "s3cret",
                "acme.example.net",
                &nonce,
                "GET",
                "/805ec0123456.cfg",
            );
            assert_eq!(check(Some(&good), 1010), Verdict::Accepted);
            assert_eq!(check(Some(&good), 1400), Verdict::Stale);
            let bad = client_digest(
                algorithm,
                "phone-1",
                "guess",
                "acme.example.net",
                &nonce,
                "GET",
                "/805ec0123456.cfg",
            );
            assert_eq!(check(Some(&bad), 1010), Verdict::Refused);
            let other_file = client_digest(
                algorithm,
                "phone-1",
                "s3cret",
                "acme.example.net",
                &nonce,
                "GET",
                "/other.cfg",
            );
            assert_eq!(check(Some(&other_file), 1010), Verdict::Refused);
        }
        let forged = format!("{}0", &nonce[..63]);
        let header = client_digest(
            Algorithm::Md5,
            "phone-1",
            "s3cret",
            "acme.example.net",
            &forged,
            "GET",
            "/805ec0123456.cfg",
        );
        assert_eq!(check(Some(&header), 1010), Verdict::Missing);
    }

    #[test]
    fn rfc2069_digest_without_qop_works() {
        let key = NonceKey::new(b"k");
        let nonce = key.issue("acme.example.net", 1000, 1);
        let ha1 = ha1(Algorithm::Md5, "phone-1", "acme.example.net", "s3cret");
        let ha2 = Algorithm::Md5.hash("GET:/805ec0123456.cfg");
        let response = Algorithm::Md5.hash(&format!("{ha1}:{nonce}:{ha2}"));
        let header = format!(
            "Digest username=\"phone-1\", realm=\"acme.example.net\", nonce=\"{nonce}\", uri=\"/805ec0123456.cfg\", response=\"{response}\""
        );
        assert_eq!(check(Some(&header), 1001), Verdict::Accepted);
    }

    #[test]
    fn basic_only_where_allowed() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("phone-1:s3cret")
        );
        assert_eq!(check(Some(&header), 0), Verdict::Accepted);
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("phone-1:nope")
        );
        assert_eq!(check(Some(&wrong), 0), Verdict::Refused);
        let mut no_basic = stored();
        no_basic.allow_basic = false;
        let request = Request {
            method: "GET",
            uri: "/x",
            authorization: Some(&header),
        };
        assert_eq!(
            verify(&no_basic, &request, &NonceKey::new(b"k"), 0, 300),
            Verdict::Missing
        );
        assert_eq!(challenges(&no_basic, "n", false).len(), 2);
        assert!(challenges(&stored(), "n", true)[0].contains("stale=true"));
    }

    #[test]
    fn garbage_headers_are_missing_credentials() {
        for header in [
            "",
            "Bearer x",
            "Digest",
            "Digest username=\"unterminated",
            "Basic !!!",
            "Digest a=1, a=2",
        ] {
            assert_eq!(check(Some(header), 0), Verdict::Missing, "{header:?}");
        }
        assert_eq!(check(None, 0), Verdict::Missing);
    }

    #[test]
    fn stored_credentials_round_trip_without_the_password() {
        let json = stored().to_json();
        assert!(!json.to_string().contains("s3cret"));
        assert_eq!(Stored::from_json(&json), Some(stored()));
    }
}

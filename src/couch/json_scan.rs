//! Finds the spans of an object's members or an array's items without
//! building values, so one bad document inside a `_changes` row or page can
//! be isolated instead of failing the whole row.
//!
//! Written by hand because serde_json refuses a whole input when any part of
//! it is nested too deeply or holds an invalid escape, and offers no way to
//! skip just that part; a caller still needs the row's `id` and `seq` to keep
//! the feed going and to report which document is broken.

use std::ops::Range;

/// `(key, span of the value)` for each member of the object in `bytes`.
pub fn members(bytes: &[u8]) -> Option<Vec<(String, Range<usize>)>> {
    let mut pos = skip_ws(bytes, 0);
    expect(bytes, &mut pos, b'{')?;
    let mut out = Vec::new();
    pos = skip_ws(bytes, pos);
    if bytes.get(pos) == Some(&b'}') {
        return Some(out);
    }
    loop {
        pos = skip_ws(bytes, pos);
        let key_end = string_end(bytes, pos)?;
        let key: String = serde_json::from_slice(&bytes[pos..key_end]).ok()?;
        pos = skip_ws(bytes, key_end);
        expect(bytes, &mut pos, b':')?;
        pos = skip_ws(bytes, pos);
        let end = value_end(bytes, pos)?;
        out.push((key, pos..end));
        pos = skip_ws(bytes, end);
        match bytes.get(pos)? {
            b',' => pos += 1,
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// The span of each item of the array in `bytes`.
pub fn items(bytes: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut pos = skip_ws(bytes, 0);
    expect(bytes, &mut pos, b'[')?;
    let mut out = Vec::new();
    pos = skip_ws(bytes, pos);
    if bytes.get(pos) == Some(&b']') {
        return Some(out);
    }
    loop {
        pos = skip_ws(bytes, pos);
        let end = value_end(bytes, pos)?;
        out.push(pos..end);
        pos = skip_ws(bytes, end);
        match bytes.get(pos)? {
            b',' => pos += 1,
            b']' => return Some(out),
            _ => return None,
        }
    }
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while bytes.get(pos).is_some_and(|b| b.is_ascii_whitespace()) {
        pos += 1;
    }
    pos
}

fn expect(bytes: &[u8], pos: &mut usize, byte: u8) -> Option<()> {
    (bytes.get(*pos) == Some(&byte)).then(|| *pos += 1)
}

/// The index just past the string starting at `pos`.
fn string_end(bytes: &[u8], pos: usize) -> Option<usize> {
    if bytes.get(pos) != Some(&b'"') {
        return None;
    }
    let mut i = pos + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the value starting at `pos`.
fn value_end(bytes: &[u8], pos: usize) -> Option<usize> {
    match bytes.get(pos)? {
        b'"' => string_end(bytes, pos),
        b'{' | b'[' => container_end(bytes, pos),
        _ => {
            let len = bytes[pos..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(bytes.len() - pos);
            (len > 0).then_some(pos + len)
        }
    }
}

fn container_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = pos;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_an_object_with_nested_and_escaped_values() {
        let text =
            br#" {"seq": 12, "id":"a\"}b", "doc": {"x": [1, {"y": "]}"}]}, "deleted": true } "#;
        let found = members(text).unwrap();
        let keys: Vec<_> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["seq", "id", "doc", "deleted"]);
        assert_eq!(&text[found[1].1.clone()], br#""a\"}b""#);
        assert_eq!(&text[found[2].1.clone()], br#"{"x": [1, {"y": "]}"}]}"#);
        assert_eq!(&text[found[3].1.clone()], b"true");
    }

    #[test]
    fn items_of_an_array_even_when_one_is_too_deep_for_serde() {
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let text = format!(r#"[{{"a":1}}, {deep}, "x"]"#);
        let spans = items(text.as_bytes()).unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(&text[spans[1].clone()], deep);
    }

    #[test]
    fn truncated_input_is_rejected() {
        assert!(members(br#"{"a": {"b": 1}"#).is_none());
        assert!(items(b"[1, 2").is_none());
        assert_eq!(members(b"{}").unwrap(), vec![]);
        assert_eq!(items(b" [ ] ").unwrap(), Vec::<Range<usize>>::new());
    }
}

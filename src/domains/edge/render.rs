//! Template rendering (pure): handlebars in strict mode (a missing variable
//! is an error, never an empty string), no HTML escaping (these are config
//! files), and the variables an edge's templates see.
//!
//! Variables, later ones winning: the class's `vars`, the edge's `vars`,
//! then the edge's own facts (`edge_id`, `edge_type`, `edge_sub_type`,
//! `mac_addresses`, `tags`), also reachable as `edge.*`.

use handlebars::Handlebars;
use handlebars::template::{Template, TemplateElement};
use serde_json::{Map, Value, json};

use super::model::EdgeRecord;

/// A registry configured for config files.
pub fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

/// What a template's text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No expression at all: the same for every edge.
    Static,
    /// Uses variables or helpers: rendered per edge.
    PerEdge,
}

/// Whether a template needs an edge to render.
///
/// # Errors
/// The template does not compile (the message says where).
pub fn kind(source: &str) -> Result<Kind, String> {
    let template = Template::compile(source).map_err(|err| err.to_string())?;
    let static_only = template.elements.iter().all(|e| {
        matches!(
            e,
            TemplateElement::RawString(_) | TemplateElement::Comment(_)
        )
    });
    Ok(if static_only {
        Kind::Static
    } else {
        Kind::PerEdge
    })
}

/// Renders one template.
///
/// # Errors
/// The template does not compile, or names a variable the context lacks.
pub fn render(hb: &Handlebars<'_>, source: &str, context: &Value) -> Result<String, String> {
    hb.render_template(source, context)
        .map_err(|err| err.to_string())
}

/// The variables an edge's templates see.
pub fn context(class_vars: &Map<String, Value>, edge: &EdgeRecord) -> Value {
    let mut vars = class_vars.clone();
    vars.extend(edge.vars.clone());
    let facts = json!({
        "edge_id": edge.edge_id,
        "edge_type": edge.edge_type,
        "edge_sub_type": edge.edge_sub_type,
        "mac_addresses": edge.mac_addresses,
        "tags": edge.tags,
    });
    if let Value::Object(facts) = &facts {
        vars.extend(facts.clone());
    }
    vars.insert("edge".into(), facts);
    Value::Object(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> EdgeRecord {
        EdgeRecord {
            doc: "e".into(),
            edge_id: "a1b2c3".into(),
            edge_type: "mobile".into(),
            edge_sub_type: "c2cbus".into(),
            mac_addresses: vec!["00:11:22:33:44:55".into()],
            tags: vec!["ALL".into()],
            vars: serde_json::from_value(json!({"lan_ip": "10.1.0.1", "dns": "edge"})).unwrap(),
            token_sha256: None,
        }
    }

    #[test]
    fn strict_and_unescaped() {
        let hb = registry();
        let class: Map<String, Value> =
            serde_json::from_value(json!({"dns": "class", "mtu": 1400})).unwrap();
        let ctx = context(&class, &edge());
        let out = render(
            &hb,
            "id={{edge_id}} ip={{lan_ip}} dns={{dns}} mtu={{mtu}} <&> {{edge.edge_type}}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "id=a1b2c3 ip=10.1.0.1 dns=edge mtu=1400 <&> mobile");
        let err = render(&hb, "x={{wan_ip}}", &ctx).unwrap_err();
        assert!(err.contains("wan_ip"), "{err}");
        assert!(render(&hb, "{{#if}}", &ctx).is_err());
    }

    #[test]
    fn static_templates_need_no_edge() {
        assert_eq!(kind("plain text\n{{! a comment }}\n"), Ok(Kind::Static));
        assert_eq!(kind("escaped \\{{x}}"), Ok(Kind::Static));
        assert_eq!(kind("x={{x}}"), Ok(Kind::PerEdge));
        assert_eq!(kind("{{#each a}}{{/each}}"), Ok(Kind::PerEdge));
        assert!(kind("{{#if}").is_err());
    }
}

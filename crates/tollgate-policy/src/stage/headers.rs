//! Header rules stage: set, append and remove headers on the upstream request
//! and on the upstream's response, per API (`apis[].headers`) and per consumer
//! (`consumers[].headers`).
//!
//! Order, fixed: API rules, then consumer rules (so a consumer rule wins over
//! an API rule for the same header), then credential injection (so no header
//! rule can overwrite or remove an injected key). Within one rule set:
//! `remove`, then `set`, then `append`. Response rules apply to responses that
//! came from the upstream, never to gateway-generated errors.
//!
//! Values are templates: `{consumer}`, `{request_id}` and `{api}` are replaced
//! per request (`{{` / `}}` are literal braces). Hop-by-hop headers, `Host` and
//! `Content-Length` cannot be named (a configuration error): they describe the
//! connection or the framing, which Tollgate owns. This stage never refuses a
//! request; a value that renders to an invalid header value is skipped.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_config::{Config, HeaderOps, HeaderRules};

use crate::pipeline::PathError;

/// Per-request values for the templates.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderVars<'a> {
    pub consumer: &'a str,
    pub request_id: &'a str,
    pub api: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Consumer,
    RequestId,
    Api,
}

/// A compiled header value: constant, or rendered per request.
#[derive(Debug, Clone)]
enum Value {
    Fixed(HeaderValue),
    Template(Vec<Part>),
}

impl Value {
    fn render(&self, vars: &HeaderVars<'_>) -> Option<HeaderValue> {
        match self {
            Self::Fixed(v) => Some(v.clone()),
            Self::Template(parts) => {
                let mut s = String::new();
                for p in parts {
                    s.push_str(match p {
                        Part::Text(t) => t,
                        Part::Consumer => vars.consumer,
                        Part::RequestId => vars.request_id,
                        Part::Api => vars.api,
                    });
                }
                HeaderValue::from_str(&s).ok()
            }
        }
    }
}

/// One direction's compiled rules.
#[derive(Debug, Clone, Default)]
pub struct CompiledOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    append: Vec<(HeaderName, Value)>,
}

impl CompiledOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.append.is_empty()
    }

    /// Applies `remove`, then `set`, then `append` to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap, vars: &HeaderVars<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        // A value that renders invalid (a placeholder held a line break) is
        // skipped: header rules never fail a request.
        for (name, value) in &self.set {
            if let Some(v) = value.render(vars) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, value) in &self.append {
            if let Some(v) = value.render(vars) {
                headers.append(name.clone(), v);
            }
        }
    }

    /// One line per rule, for `tollgate explain`.
    pub fn describe(&self) -> Vec<String> {
        let show = |v: &Value| match v {
            Value::Fixed(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            Value::Template(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.replace('{', "{{").replace('}', "}}"),
                    Part::Consumer => "{consumer}".to_owned(),
                    Part::RequestId => "{request_id}".to_owned(),
                    Part::Api => "{api}".to_owned(),
                })
                .collect(),
        };
        let mut out = Vec::new();
        out.extend(self.remove.iter().map(|n| format!("remove {n}")));
        out.extend(
            self.set
                .iter()
                .map(|(n, v)| format!("set {n}: {}", show(v))),
        );
        out.extend(
            self.append
                .iter()
                .map(|(n, v)| format!("append {n}: {}", show(v))),
        );
        out
    }
}

/// One API's or consumer's compiled rules.
#[derive(Debug, Clone, Default)]
pub struct CompiledRules {
    pub request: CompiledOps,
    pub response: CompiledOps,
}

/// Header names Tollgate owns: hop-by-hop (RFC 9110 §7.6.1), the target, and framing.
const FORBIDDEN: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

fn name(raw: &str, path: String, errs: &mut Vec<PathError>) -> Option<HeaderName> {
    let Ok(n) = HeaderName::from_bytes(raw.as_bytes()) else {
        errs.push(PathError {
            path,
            message: format!("{raw:?} is not a valid header name"),
        });
        return None;
    };
    if FORBIDDEN.contains(&n.as_str()) {
        errs.push(PathError {
            path,
            message: format!(
                "{n} cannot be changed by header rules: hop-by-hop headers, Host and Content-Length belong to the connection"
            ),
        });
        return None;
    }
    Some(n)
}

fn parse_template(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut var = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => var.push(c),
                        None => return Err(format!("unterminated {{{var}")),
                    }
                }
                let part = match var.as_str() {
                    "consumer" => Part::Consumer,
                    "request_id" => Part::RequestId,
                    "api" => Part::Api,
                    other if other.starts_with("env:") || other.starts_with("file:") => {
                        return Err(
                            "secret references are not expanded in header rules: inject secrets with credentials"
                                .to_owned(),
                        );
                    }
                    other => {
                        return Err(format!(
                            "unknown placeholder {{{other}}}: expected {{consumer}}, {{request_id}} or {{api}} ({{{{ for a literal brace)"
                        ));
                    }
                };
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(part);
            }
            '}' => return Err("a lone } must be written }}".to_owned()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

fn value(raw: &str, path: &str, errs: &mut Vec<PathError>) -> Option<Value> {
    let parts = match parse_template(raw) {
        Ok(p) => p,
        Err(message) => {
            errs.push(PathError {
                path: path.to_owned(),
                message,
            });
            return None;
        }
    };
    // The literal text must be a valid header value on its own; placeholders
    // are checked per request.
    for p in &parts {
        if let Part::Text(t) = p
            && HeaderValue::from_str(t).is_err()
        {
            errs.push(PathError {
                path: path.to_owned(),
                message: "must be printable text without line breaks".to_owned(),
            });
            return None;
        }
    }
    match parts.as_slice() {
        [] => Some(Value::Fixed(HeaderValue::from_static(""))),
        [Part::Text(t)] => HeaderValue::from_str(t).ok().map(Value::Fixed),
        _ => Some(Value::Template(parts)),
    }
}

fn compile_ops(ops: &HeaderOps, path: &str, errs: &mut Vec<PathError>) -> CompiledOps {
    let mut out = CompiledOps::default();
    for (i, raw) in ops.remove.iter().enumerate() {
        if let Some(n) = name(raw, format!("{path}.remove[{i}]"), errs) {
            out.remove.push(n);
        }
    }
    for (list, map, into) in [
        ("set", &ops.set, &mut out.set),
        ("append", &ops.append, &mut out.append),
    ] {
        for (raw, v) in map {
            let p = format!("{path}.{list}.{raw}");
            let (Some(n), Some(v)) = (name(raw, p.clone(), errs), value(v, &p, errs)) else {
                continue;
            };
            into.push((n, v));
        }
    }
    out
}

fn compile_rules(rules: &HeaderRules, path: &str, errs: &mut Vec<PathError>) -> CompiledRules {
    CompiledRules {
        request: compile_ops(&rules.request, &format!("{path}.request"), errs),
        response: compile_ops(&rules.response, &format!("{path}.response"), errs),
    }
}

/// The compiled header rules of every API and consumer that has any.
#[derive(Debug, Default)]
pub(crate) struct HeaderStage {
    apis: HashMap<Arc<str>, CompiledRules>,
    consumers: HashMap<Arc<str>, CompiledRules>,
}

impl HeaderStage {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut out = Self::default();
        for (i, api) in cfg.apis.iter().enumerate() {
            if !api.headers.is_empty() {
                let r = compile_rules(&api.headers, &format!("apis[{i}].headers"), errs);
                out.apis.insert(Arc::from(api.name.as_str()), r);
            }
        }
        for (i, c) in cfg.consumers.iter().enumerate() {
            if !c.headers.is_empty() {
                let r = compile_rules(&c.headers, &format!("consumers[{i}].headers"), errs);
                out.consumers.insert(Arc::from(c.name.as_str()), r);
            }
        }
        out
    }

    pub(crate) fn api(&self, api: &str) -> Option<&CompiledRules> {
        self.apis.get(api)
    }

    pub(crate) fn consumer(&self, consumer: &str) -> Option<&CompiledRules> {
        self.consumers.get(consumer)
    }

    /// The rules that apply to a request of `api` by `consumer`, in order (API first).
    pub(crate) fn rules(
        &self,
        api: Option<&str>,
        consumer: Option<&str>,
    ) -> impl Iterator<Item = &CompiledRules> {
        let a = api.and_then(|a| self.apis.get(a));
        let c = consumer.and_then(|c| self.consumers.get(c));
        a.into_iter().chain(c)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::compile_errors;

    fn rules(v: serde_json::Value) -> CompiledRules {
        let r: HeaderRules = serde_json::from_value(v).unwrap();
        let mut errs = Vec::new();
        let c = compile_rules(&r, "x", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        c
    }

    #[test]
    fn remove_then_set_then_append_with_templates() {
        let r = rules(json!({ "request": {
            "remove": ["x-drop", "x-set"],
            "set": { "x-set": "by {consumer} for {api} ({request_id}) {{literal}}" },
            "append": { "x-multi": "two" }
        }}));
        let mut h = HeaderMap::new();
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("x-set", HeaderValue::from_static("caller"));
        h.insert("x-multi", HeaderValue::from_static("one"));
        h.insert("x-keep", HeaderValue::from_static("k"));
        let vars = HeaderVars {
            consumer: "ci",
            request_id: "r-1",
            api: "github",
        };
        r.request.apply(&mut h, &vars);
        assert!(h.get("x-drop").is_none());
        assert_eq!(h["x-set"], "by ci for github (r-1) {literal}");
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);
        assert_eq!(h["x-keep"], "k");
        assert!(r.response.is_empty());
        assert_eq!(
            r.request.describe(),
            [
                "remove x-drop",
                "remove x-set",
                "set x-set: by {consumer} for {api} ({request_id}) {{literal}}",
                "append x-multi: two"
            ]
        );
    }

    #[test]
    fn an_unrenderable_value_is_skipped() {
        let r = rules(json!({ "response": { "set": { "x-who": "{consumer}" } } }));
        let mut h = HeaderMap::new();
        let vars = HeaderVars {
            consumer: "bad\nname",
            ..HeaderVars::default()
        };
        r.response.apply(&mut h, &vars);
        assert!(h.is_empty());
    }

    #[test]
    fn forbidden_names_and_bad_templates_are_config_errors() {
        let errs = compile_errors(json!({
            "consumers": [{ "name": "c", "identify": { "source": ["10.0.0.1"] },
                "headers": { "response": { "remove": ["Transfer-Encoding"] } } }],
            "apis": [{ "name": "a", "hosts": ["a.example"], "headers": {
                "request": { "set": { "Host": "x", "x-ok": "{nope}", "bad name": "v", "x-brace": "a}", "x-secret": "${env:K}" },
                             "append": { "Connection": "close", "x-nl": "a\nb" } },
                "response": { "remove": ["content-length"] }
            }}]
        }));
        let got: Vec<String> = errs.iter().map(|e| e.path.clone()).collect();
        for want in [
            "apis[0].headers.request.set.Host",
            "apis[0].headers.request.set.x-ok",
            "apis[0].headers.request.set.bad name",
            "apis[0].headers.request.set.x-brace",
            "apis[0].headers.request.set.x-secret",
            "apis[0].headers.request.append.Connection",
            "apis[0].headers.request.append.x-nl",
            "apis[0].headers.response.remove[0]",
            "consumers[0].headers.response.remove[0]",
        ] {
            assert!(
                got.iter().any(|g| g == want),
                "{want} missing from {got:#?}"
            );
        }
        assert_eq!(got.len(), 9, "{errs:#?}");
    }
}

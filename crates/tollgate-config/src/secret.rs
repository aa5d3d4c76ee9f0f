//! Secret references: `${env:NAME}` or `${file:/path}` (a literal string is
//! accepted too, for tests and quick starts). The reference is what the config
//! holds; the value is read by [`SecretRef::resolve`] at compile/reload time and
//! is never printed by `Debug`, `Display` or `Serialize`.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(String),
    Literal(String),
}

/// A resolved secret value. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The secret's bytes, for comparison or injection. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(REDACTED)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("secret {0} is empty")]
    Empty(String),
    #[error("invalid secret reference: {0}")]
    Syntax(String),
}

impl SecretRef {
    /// Parses `${env:NAME}`, `${file:/path}` or a literal.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            return match inner.split_once(':') {
                Some(("env", name)) if !name.is_empty() => Ok(Self::Env(name.to_owned())),
                Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.to_owned())),
                _ => Err(SecretError::Syntax(
                    "expected ${env:NAME} or ${file:/path}".to_owned(),
                )),
            };
        }
        if s.contains("${") {
            return Err(SecretError::Syntax(
                "a reference must be the whole value: ${env:NAME} or ${file:/path}".to_owned(),
            ));
        }
        Ok(Self::Literal(s.to_owned()))
    }

    /// Reads the secret's current value. Files are trimmed of a trailing newline.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            Self::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|e| SecretError::File {
                    path: path.clone(),
                    reason: e.kind().to_string(),
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            Self::Literal(v) => v.clone(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

impl fmt::Display for SecretRef {
    /// Shows the reference, never a literal's value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "${{env:{n}}}"),
            Self::File(p) => write!(f, "${{file:{p}}}"),
            Self::Literal(_) => f.write_str("<literal>"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A secret reference: ${env:NAME} or ${file:/path}. Literals are accepted but discouraged."
        })
    }
}

/// A string with embedded secret references, e.g. `Bearer ${env:GITHUB_TOKEN}`:
/// every `${env:NAME}` / `${file:/path}` is replaced by the secret's value when
/// the configuration is built ([`SecretTemplate::resolve`]). `Display`,
/// `Debug` and `Serialize` show the references, never resolved values; a
/// template without any reference is shown as `<literal>` (it may itself be a
/// key written inline).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Ref(SecretRef),
}

impl SecretTemplate {
    /// The empty string.
    pub fn empty() -> Self {
        Self { parts: Vec::new() }
    }

    /// Parses text with zero or more `${env:NAME}` / `${file:/path}` references.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_owned()));
            }
            let after = &rest[start..];
            let end = after.find('}').ok_or_else(|| {
                SecretError::Syntax(
                    "unterminated ${...}: expected ${env:NAME} or ${file:/path}".to_owned(),
                )
            })?;
            parts.push(TemplatePart::Ref(SecretRef::parse(&after[..=end])?));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Whether the template contains at least one secret reference.
    pub fn has_reference(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, TemplatePart::Ref(_)))
    }

    /// Reads every referenced secret (now) and returns the filled-in value.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Ref(r) => out.push_str(r.resolve()?.expose()),
            }
        }
        Ok(Secret(out))
    }
}

impl fmt::Display for SecretTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.has_reference() {
            return f.write_str("<literal>");
        }
        for p in &self.parts {
            match p {
                TemplatePart::Text(t) => f.write_str(t)?,
                TemplatePart::Ref(r) => write!(f, "{r}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SecretTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretTemplate({self})")
    }
}

impl Serialize for SecretTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SecretTemplate {
    fn schema_name() -> Cow<'static, str> {
        "SecretTemplate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Text with secret references, e.g. \"Bearer ${env:TOKEN}\"; each ${env:NAME} or ${file:/path} is replaced by the secret."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_resolve_references_and_never_show_values() {
        let path = std::env::temp_dir().join(format!("tg-tpl-{}", std::process::id()));
        std::fs::write(&path, "filesecret\n").unwrap();
        let t = SecretTemplate::parse(&format!("Bearer ${{file:{}}}!", path.display())).unwrap();
        assert!(t.has_reference());
        assert_eq!(t.resolve().unwrap().expose(), "Bearer filesecret!");
        let shown = format!("{t} {t:?} {}", serde_json::to_string(&t).unwrap());
        assert!(!shown.contains("filesecret") && shown.contains("Bearer ${file:"));
        let lit = SecretTemplate::parse("sk-live-123").unwrap();
        assert_eq!(lit.to_string(), "<literal>");
        assert_eq!(lit.resolve().unwrap().expose(), "sk-live-123");
        assert_eq!(
            SecretTemplate::parse("")
                .unwrap()
                .resolve()
                .unwrap()
                .expose(),
            ""
        );
        assert!(SecretTemplate::parse("x ${env:A").is_err());
        assert!(SecretTemplate::parse("${vault:x}").is_err());
        let missing = SecretTemplate::parse("a ${env:TOLLGATE_TEST_SURELY_UNSET_VAR}").unwrap();
        assert_eq!(
            missing.resolve().unwrap_err(),
            SecretError::EnvMissing("TOLLGATE_TEST_SURELY_UNSET_VAR".into())
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            SecretRef::parse("${env:K}").unwrap(),
            SecretRef::Env("K".into())
        );
        assert_eq!(
            SecretRef::parse("${file:/x}").unwrap(),
            SecretRef::File("/x".into())
        );
        assert!(SecretRef::parse("${vault:x}").is_err());
        assert!(SecretRef::parse("pre${env:K}").is_err());
        let lit = SecretRef::parse("hunter2").unwrap();
        assert!(!format!("{lit:?} {lit}").contains("hunter2"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = SecretRef::Literal("hunter2".into()).resolve().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}

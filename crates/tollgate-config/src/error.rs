//! Configuration errors that point at the offending place: file, line, column
//! and dotted key path, so `tollgate validate` output can be followed like a
//! compiler diagnostic.

use std::fmt;

/// One configuration problem.
///
/// `Display` renders `file:line:column: path: message`; when the problem is not
/// tied to a key (an unreadable file, a YAML syntax error before any key) the
/// path is empty and the form is `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem is in (or the origin name given to [`crate::load_str`]).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
    /// Dotted key path such as `apis[0].allow[1].paths[0]`; empty for the whole document.
    pub path: String,
    /// What is wrong, in words a config author can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration, in source order where known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// The problems.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(v: Vec<ConfigError>) -> Self {
        Self(v)
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(path: &str) -> ConfigError {
        ConfigError {
            file: "t.yaml".into(),
            line: 3,
            column: 7,
            path: path.into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn display_formats() {
        assert_eq!(
            err("dns.timeout").to_string(),
            "t.yaml:3:7: dns.timeout: bad"
        );
        assert_eq!(err("").to_string(), "t.yaml:3:7: bad");
        let all = ConfigErrors(vec![err("a"), err("b")]);
        assert_eq!(all.to_string(), "t.yaml:3:7: a: bad\nt.yaml:3:7: b: bad");
        assert_eq!(all.len(), 2);
    }
}

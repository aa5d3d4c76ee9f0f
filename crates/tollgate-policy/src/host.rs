//! Host names as the policy compares them, and host patterns from config.
//!
//! Both requests and config go through [`normalize_host`], so `API.GitHub.com.`,
//! `api.github.com` and (for IDNs) `bücher.example` / `xn--bcher-kva.example`
//! compare equal: lower-case ASCII, one trailing dot removed, IDN as punycode,
//! IPv6 literals without brackets in their canonical text form.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Normalises a host. `None` means it is not a valid host name or address.
/// Borrows when the input is already normal (the common case on the hot path).
pub(crate) fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| Cow::Owned(a.to_string()));
    }
    if host.contains(':') {
        let addr = host.parse::<Ipv6Addr>().ok()?;
        let canonical = addr.to_string();
        return Some(if canonical == host {
            Cow::Borrowed(host)
        } else {
            Cow::Owned(canonical)
        });
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if is_normal_ascii(host) {
        return Some(Cow::Borrowed(host));
    }
    let converted = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        // UTS 46 mapping + punycode; also lower-cases and maps full-width dots.
        let ascii = idna::domain_to_ascii(host).ok()?;
        match ascii.strip_suffix('.') {
            Some(stripped) => stripped.to_owned(),
            None => ascii,
        }
    };
    is_normal_ascii(&converted).then_some(Cow::Owned(converted))
}

/// Lower-case LDH (plus `_`, which real-world names use) labels of 1..=63
/// bytes, at most 253 bytes in all.
fn is_normal_ascii(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// A host pattern from `apis[].hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// Matches exactly this normalised host.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any host with at
    /// least one more label in front, never `example.com` itself.
    Suffix(String),
}

impl HostPattern {
    pub(crate) fn parse(src: &str) -> Result<Self, String> {
        if let Some(rest) = src.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(format!(
                    "host pattern {src:?}: only one leading '*.' is allowed"
                ));
            }
            let host = normalize_host(rest)
                .filter(|h| !h.contains(':'))
                .ok_or_else(|| {
                    format!("host pattern {src:?} is not a valid host name after '*.'")
                })?;
            return Ok(Self::Suffix(format!(".{host}")));
        }
        if src.contains('*') {
            return Err(format!(
                "host pattern {src:?}: '*' is only allowed as a whole leading label ('*.example.com')"
            ));
        }
        if src.contains('/')
            || (src.contains(':') && !src.starts_with('[') && src.parse::<Ipv6Addr>().is_err())
        {
            return Err(format!(
                "host pattern {src:?} must be a bare host name, without scheme, port or path"
            ));
        }
        normalize_host(src)
            .map(|h| Self::Exact(h.into_owned()))
            .ok_or_else(|| format!("host pattern {src:?} is not a valid host name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        let cases = [
            ("api.github.com", Some("api.github.com")),
            ("API.GitHub.COM", Some("api.github.com")),
            ("api.github.com.", Some("api.github.com")),
            ("api.github.com..", None),
            ("bücher.example", Some("xn--bcher-kva.example")),
            ("BÜCHER.example.", Some("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", Some("xn--bcher-kva.example")),
            ("[::1]", Some("::1")),
            ("[2001:DB8:0:0::1]", Some("2001:db8::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[::1", None),
            ("[example.com]", None),
            ("127.0.0.1", Some("127.0.0.1")),
            ("_dmarc.example.com", Some("_dmarc.example.com")),
            ("", None),
            (".", None),
            ("a..b", None),
            ("exa mple.com", None),
            ("evil.com/x", None),
            ("user@evil.com", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host(input).as_deref(), want, "{input:?}");
        }
        assert!(matches!(
            normalize_host("api.github.com"),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn parses_host_patterns() {
        assert_eq!(
            HostPattern::parse("API.example.com."),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.Example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.bücher.example"),
            Ok(HostPattern::Suffix(".xn--bcher-kva.example".into()))
        );
        assert_eq!(
            HostPattern::parse("[::1]"),
            Ok(HostPattern::Exact("::1".into()))
        );
        for bad in [
            "*",
            "*.",
            "a.*.com",
            "*example.com",
            "*.*.example.com",
            "api.example.com:443",
            "https://x.com",
            "",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}

//! Identify stage: which configured consumer is calling.
//!
//! Methods are tried in a fixed order: API keys (named headers first, then
//! named query parameters, then `Proxy-Authorization: Basic`/`Bearer`, then on
//! routes `Authorization: Bearer`), the verified client certificate on the TLS listener (URI SAN,
//! then DNS SAN, then subject CN rules; a certificate no rule names falls
//! through), trusted identity headers, then the connection's source address
//! (most specific CIDR wins). Keys are compared in constant time against every
//! configured key so timing reveals neither the key nor which consumer owns it.
//! Keys are held and compared as SHA-256 digests (`key` is hashed at compile
//! time, `key_sha256` is given hashed), so the comparison does not even depend
//! on the key's length.
//!
//! Refusals the client sees (`consumer_unidentified`, 407 on the proxy, 401 on
//! routes):
//! - a credential was presented in a place Tollgate owns (a configured key
//!   header, or `Proxy-Authorization` while some consumer uses it) and it is
//!   wrong, malformed or repeated. This is never softened to `anonymous` and
//!   never reported-only: report mode is for rolling out policies, not for
//!   accepting bad credentials.
//! - nothing matched and `unknown_consumer.action` is `deny` (report mode may
//!   turn this one into a log line, the caller then continues as `anonymous`).
//!
//! `Authorization: Bearer` on routes is different: it may be the client's own
//! upstream token, so a value that is not a Tollgate key is ignored, and a
//! value that is one is removed before forwarding
//! (`Evaluation::strip_authorization`).

use std::collections::HashMap;

use base64::Engine as _;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tollgate_config::{ApiKeyIdentity, Config, Identify, UnknownConsumerAction};

use super::Ctx;
use super::access::Access;
use crate::error::{ErrorCode, GatewayError};
use crate::evaluation::Verdict;
use crate::pipeline::PathError;
use crate::request::{RequestInfo, TrafficKind};

const STAGE: &str = "identify";

/// Who the identify stage found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A configured consumer (index into `config.consumers`).
    Known { consumer: usize, via: Via },
    /// Nothing presented matched; `unknown_consumer` decides.
    Unknown,
    /// A credential was presented and is wrong: always refused.
    Rejected(&'static str),
}

/// How a consumer was recognised (for the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    KeyHeader(usize),
    /// An API key in the query parameter `key_queries[i]` (removed before forwarding).
    Query(usize),
    ProxyAuthorization,
    Authorization,
    Header(usize),
    ClientCert(CertField),
    /// A verified JWT from `auth.jwt[i]`.
    Jwt(usize),
    Source(IpNet),
}

/// Which certificate fact a `client_cert` rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertField {
    Uri,
    Dns,
    SubjectCn,
}

/// One API key, as the SHA-256 of its value (never the value itself).
#[derive(Debug)]
struct Key {
    digest: [u8; 32],
    consumer: u32,
}

/// API keys carried in one configured query parameter.
#[derive(Debug)]
struct KeyQuery {
    name: String,
    keys: Vec<Key>,
}

/// API keys carried in one configured header.
#[derive(Debug)]
struct KeyHeader {
    name: HeaderName,
    keys: Vec<Key>,
}

/// One trusted identity header and the values that name consumers.
#[derive(Debug)]
struct IdHeader {
    name: HeaderName,
    values: HashMap<Box<[u8]>, usize>,
}

/// The compiled identify stage.
#[derive(Debug, Default)]
pub(crate) struct Identifier {
    key_headers: Vec<KeyHeader>,
    key_queries: Vec<KeyQuery>,
    /// Keys presented in `Proxy-Authorization` (or `Authorization` on routes).
    default_keys: Vec<Key>,
    id_headers: Vec<IdHeader>,
    /// `client_cert` rules: URI rules first, then DNS, then subject CN.
    cert_rules: Vec<(CertField, String, usize)>,
    /// Most specific first.
    sources: Vec<(IpNet, usize)>,
    strip: Vec<HeaderName>,
    jwt: super::jwt::JwtVerifier,
}

fn header_name(name: &str, path: String, errs: &mut Vec<PathError>) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(PathError {
                path,
                message: format!("{name:?} is not a valid header name"),
            });
            None
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the same caller as `a.b.c.d`.
pub(crate) fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

fn parse_source(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(s.parse::<std::net::IpAddr>().ok()?),
    };
    // Write `::ffff:10.0.0.0/104` and mean `10.0.0.0/8`.
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other.trunc(),
    })
}

impl Identifier {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut out = Self {
            jwt: super::jwt::JwtVerifier::compile(cfg, errs),
            ..Self::default()
        };
        // Keys seen so far with their consumer, to refuse duplicates (which
        // would make identity depend on config order).
        let mut all_keys: Vec<([u8; 32], usize)> = Vec::new();
        for (i, consumer) in cfg.consumers.iter().enumerate() {
            let Ok(idx) = u32::try_from(i) else { continue };
            match &consumer.identify {
                Identify::Header(h) => {
                    let path = format!("consumers[{i}].identify.header");
                    let Some(name) = header_name(&h.name, format!("{path}.name"), errs) else {
                        continue;
                    };
                    if h.value.is_empty() || HeaderValue::from_str(&h.value).is_err() {
                        errs.push(PathError {
                            path: format!("{path}.value"),
                            message: "must be a non-empty, printable header value".to_owned(),
                        });
                        continue;
                    }
                    let entry = match out.id_headers.iter_mut().position(|e| e.name == name) {
                        Some(p) => &mut out.id_headers[p],
                        None => {
                            out.id_headers.push(IdHeader {
                                name,
                                values: HashMap::new(),
                            });
                            let last = out.id_headers.len() - 1;
                            &mut out.id_headers[last]
                        }
                    };
                    if let Some(prev) = entry.values.insert(h.value.as_bytes().into(), i) {
                        errs.push(PathError {
                            path: format!("{path}.value"),
                            message: format!("same header and value as consumers[{prev}]"),
                        });
                    }
                }
                Identify::ApiKey(k) => {
                    let path = format!("consumers[{i}].identify.api_key");
                    let Some(digest) = key_digest(k, &path, errs) else {
                        continue;
                    };
                    if let Some((_, prev)) = all_keys.iter().find(|(d, _)| *d == digest) {
                        errs.push(PathError {
                            path: format!("{path}.key"),
                            message: format!(
                                "the same API key is already used by consumers[{prev}]"
                            ),
                        });
                        continue;
                    }
                    all_keys.push((digest, i));
                    let key = Key {
                        digest,
                        consumer: idx,
                    };
                    match (&k.header, &k.query) {
                        (Some(_), Some(_)) => errs.push(PathError {
                            path,
                            message: "set at most one of header and query".to_owned(),
                        }),
                        (None, None) => out.default_keys.push(key),
                        (None, Some(q)) => {
                            if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
                                errs.push(PathError {
                                    path: format!("{path}.query"),
                                    message: format!("{q:?} is not a plain query parameter name"),
                                });
                                continue;
                            }
                            match out.key_queries.iter_mut().find(|g| g.name == *q) {
                                Some(g) => g.keys.push(key),
                                None => out.key_queries.push(KeyQuery {
                                    name: q.clone(),
                                    keys: vec![key],
                                }),
                            }
                        }
                        (Some(h), None) => {
                            let Some(name) = header_name(h, format!("{path}.header"), errs) else {
                                continue;
                            };
                            if name == PROXY_AUTHORIZATION {
                                errs.push(PathError {
                                    path: format!("{path}.header"),
                                    message:
                                        "omit `header` to read the key from Proxy-Authorization"
                                            .to_owned(),
                                });
                                continue;
                            }
                            match out.key_headers.iter_mut().find(|g| g.name == name) {
                                Some(g) => g.keys.push(key),
                                None => out.key_headers.push(KeyHeader {
                                    name,
                                    keys: vec![key],
                                }),
                            }
                        }
                    }
                }
                // Compiled by `JwtVerifier::compile`.
                Identify::Jwt(_) => {}
                Identify::ClientCert(c) => {
                    let path = format!("consumers[{i}].identify.client_cert");
                    let rule = match (&c.uri, &c.dns, &c.subject_cn) {
                        (Some(v), None, None) => Some((CertField::Uri, v.clone())),
                        // DNS names compare case-insensitively.
                        (None, Some(v), None) => Some((CertField::Dns, v.to_ascii_lowercase())),
                        (None, None, Some(v)) => Some((CertField::SubjectCn, v.clone())),
                        _ => None,
                    };
                    let Some((field, value)) = rule.filter(|(_, v)| !v.is_empty()) else {
                        errs.push(PathError {
                            path,
                            message: "set exactly one non-empty field of subject_cn, dns, uri"
                                .to_owned(),
                        });
                        continue;
                    };
                    if let Some((_, _, prev)) = out
                        .cert_rules
                        .iter()
                        .find(|(f, v, _)| *f == field && *v == value)
                    {
                        errs.push(PathError {
                            path,
                            message: format!("consumers[{prev}] matches the same certificate"),
                        });
                        continue;
                    }
                    out.cert_rules.push((field, value, i));
                }
                Identify::Source(list) => {
                    let path = format!("consumers[{i}].identify.source");
                    if list.is_empty() {
                        errs.push(PathError {
                            path: path.clone(),
                            message: "list at least one address or CIDR".to_owned(),
                        });
                    }
                    for (j, s) in list.iter().enumerate() {
                        match parse_source(s) {
                            Some(net) => out.sources.push((net, i)),
                            None => errs.push(PathError {
                                path: format!("{path}[{j}]"),
                                message: format!("{s:?} is not an IP address or CIDR"),
                            }),
                        }
                    }
                }
            }
        }
        // URI SANs (SPIFFE IDs) are the most specific name a certificate carries.
        out.cert_rules.sort_by_key(|(f, _, _)| *f as u8);
        // Most specific first; stable so equal prefixes keep config order.
        out.sources
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        for name in out
            .id_headers
            .iter()
            .map(|h| &h.name)
            .chain(out.key_headers.iter().map(|g| &g.name))
        {
            if !out.strip.contains(name) {
                out.strip.push(name.clone());
            }
        }
        out
    }

    pub(crate) fn strip_headers(&self) -> &[HeaderName] {
        &self.strip
    }

    /// Every `auth.jwt` issuer's key set (the proxy fetches them).
    pub(crate) fn jwks(&self) -> impl Iterator<Item = &std::sync::Arc<super::jwt::Jwks>> + '_ {
        self.jwt.jwks()
    }

    /// The key set a route request's JWT needs but lacks its `kid`.
    pub(crate) fn jwt_missing_key(
        &self,
        headers: &HeaderMap,
    ) -> Option<&std::sync::Arc<super::jwt::Jwks>> {
        if self.jwt.is_empty() {
            return None;
        }
        let v = single(headers, &AUTHORIZATION).ok()??;
        let token = bearer(v.as_bytes()).filter(|t| super::jwt::looks_like_jwt(t))?;
        self.jwt.missing_key(token)
    }

    /// The upstream path and query without the API key the consumer was
    /// identified by, when that key came in a query parameter.
    pub(crate) fn strip_query(&self, via: Via, path_and_query: &str) -> Option<String> {
        let Via::Query(g) = via else { return None };
        let name = &self.key_queries.get(g)?.name;
        Some(remove_query_param(path_and_query, name))
    }

    pub(crate) fn identify(&self, req: &RequestInfo<'_>) -> Identity {
        for (g, group) in self.key_headers.iter().enumerate() {
            match single(req.headers, &group.name) {
                Err(()) => return Identity::Rejected("the API key header is repeated"),
                Ok(None) => {}
                Ok(Some(v)) => {
                    return match find_key(&group.keys, v.as_bytes()) {
                        Some(consumer) => Identity::Known {
                            consumer,
                            via: Via::KeyHeader(g),
                        },
                        None => Identity::Rejected("the API key is not valid"),
                    };
                }
            }
        }
        if let Some(query) = req.query.filter(|_| req.kind != TrafficKind::Connect) {
            for (g, group) in self.key_queries.iter().enumerate() {
                match query_single(query, &group.name) {
                    Err(()) => {
                        return Identity::Rejected("the API key query parameter is repeated");
                    }
                    Ok(None) => {}
                    Ok(Some(v)) => {
                        return match find_key(&group.keys, v.as_bytes()) {
                            Some(consumer) => Identity::Known {
                                consumer,
                                via: Via::Query(g),
                            },
                            None => Identity::Rejected("the API key is not valid"),
                        };
                    }
                }
            }
        }
        if !self.default_keys.is_empty() {
            match single(req.headers, &PROXY_AUTHORIZATION) {
                Err(()) => return Identity::Rejected("Proxy-Authorization is repeated"),
                Ok(None) => {}
                Ok(Some(v)) => {
                    let Some(presented) = proxy_credential(v.as_bytes()) else {
                        return Identity::Rejected("Proxy-Authorization must be Basic or Bearer");
                    };
                    return match find_key(&self.default_keys, &presented) {
                        Some(consumer) => Identity::Known {
                            consumer,
                            via: Via::ProxyAuthorization,
                        },
                        None => Identity::Rejected("the API key is not valid"),
                    };
                }
            }
            if req.kind == TrafficKind::Route
                && let Ok(Some(v)) = single(req.headers, &AUTHORIZATION)
                && let Some(token) = bearer(v.as_bytes())
                && let Some(consumer) = find_key(&self.default_keys, token)
            {
                return Identity::Known {
                    consumer,
                    via: Via::Authorization,
                };
            }
        }
        if req.kind == TrafficKind::Route
            && !self.jwt.is_empty()
            && let Ok(Some(v)) = single(req.headers, &AUTHORIZATION)
            && let Some(token) = bearer(v.as_bytes())
            && super::jwt::looks_like_jwt(token)
        {
            return match self.jwt.verify(token) {
                Ok((issuer, consumer)) => Identity::Known {
                    consumer,
                    via: Via::Jwt(issuer),
                },
                Err(why) => Identity::Rejected(why),
            };
        }
        if let Some(cert) = req.client_cert
            && let Some(&(field, _, consumer)) = self
                .cert_rules
                .iter()
                .find(|(field, value, _)| cert_has(cert, *field, value))
        {
            return Identity::Known {
                consumer,
                via: Via::ClientCert(field),
            };
        }
        for (h, header) in self.id_headers.iter().enumerate() {
            match single(req.headers, &header.name) {
                // Two values could name two consumers: refuse rather than guess.
                Err(()) => return Identity::Rejected("the identity header is repeated"),
                Ok(None) => {}
                Ok(Some(v)) => {
                    if let Some(&consumer) = header.values.get(v.as_bytes()) {
                        return Identity::Known {
                            consumer,
                            via: Via::Header(h),
                        };
                    }
                }
            }
        }
        if !self.sources.is_empty() {
            let ip = canonical_ip(req.peer);
            if let Some(&(net, consumer)) = self.sources.iter().find(|(net, _)| net.contains(&ip)) {
                return Identity::Known {
                    consumer,
                    via: Via::Source(net),
                };
            }
        }
        Identity::Unknown
    }

    /// Turns what [`Self::identify`] found into the consumer the request runs
    /// as (an index into `access.consumers`), or the refusal.
    pub(crate) fn decide(
        &self,
        ctx: &mut Ctx,
        identity: Identity,
        access: &Access,
        unknown: UnknownConsumerAction,
    ) -> Result<usize, GatewayError> {
        match identity {
            Identity::Known { consumer, via } => {
                ctx.step(STAGE, Verdict::Continue, || {
                    format!(
                        "consumer {:?} {}",
                        access.consumer_name(consumer),
                        self.describe(via)
                    )
                });
                Ok(consumer)
            }
            Identity::Unknown => {
                match unknown {
                    UnknownConsumerAction::Anonymous => ctx.step(STAGE, Verdict::Continue, || {
                        "no consumer matched; unknown_consumer.action: anonymous".to_owned()
                    }),
                    UnknownConsumerAction::Deny => {
                        let err = GatewayError::new(
                            ErrorCode::ConsumerUnidentified,
                            "no consumer matches this request",
                        );
                        ctx.refuse(STAGE, err, true, || {
                            "no consumer matched; unknown_consumer.action: deny".to_owned()
                        })?;
                    }
                }
                Ok(access.anonymous)
            }
            Identity::Rejected(why) => {
                let err = GatewayError::new(ErrorCode::ConsumerUnidentified, why);
                ctx.refuse(STAGE, err, false, || format!("credential refused: {why}"))?;
                Ok(access.anonymous)
            }
        }
    }

    /// How the consumer was recognised, for the trace (never the credential).
    pub(crate) fn describe(&self, via: Via) -> String {
        match via {
            Via::KeyHeader(g) => format!(
                "by API key in header {}",
                self.key_headers.get(g).map_or("?", |g| g.name.as_str())
            ),
            Via::Query(g) => format!(
                "by API key in query parameter {} (removed before forwarding)",
                self.key_queries.get(g).map_or("?", |g| g.name.as_str())
            ),
            Via::ProxyAuthorization => "by API key in Proxy-Authorization".to_owned(),
            Via::Authorization => {
                "by API key in Authorization (removed before forwarding)".to_owned()
            }
            Via::Header(h) => format!(
                "by header {}",
                self.id_headers.get(h).map_or("?", |h| h.name.as_str())
            ),
            Via::ClientCert(CertField::Uri) => "by client certificate URI SAN".to_owned(),
            Via::ClientCert(CertField::Dns) => "by client certificate DNS SAN".to_owned(),
            Via::ClientCert(CertField::SubjectCn) => "by client certificate subject CN".to_owned(),
            Via::Jwt(i) => format!("by JWT from issuer {}", self.jwt.issuer_name(i)),
            Via::Source(net) => format!("by source address in {net}"),
        }
    }
}

/// The SHA-256 of an `api_key`'s key: hashed here from `key`, or decoded from
/// `key_sha256`. Errors name the field, never the value.
fn key_digest(k: &ApiKeyIdentity, path: &str, errs: &mut Vec<PathError>) -> Option<[u8; 32]> {
    match (&k.key, &k.key_sha256) {
        (Some(r), None) => match r.resolve() {
            Ok(secret) if !secret.expose().is_empty() => {
                Some(Sha256::digest(secret.expose().as_bytes()).into())
            }
            Ok(_) => {
                errs.push(PathError {
                    path: format!("{path}.key"),
                    message: "the API key is empty".to_owned(),
                });
                None
            }
            Err(e) => {
                // SecretError names the reference, never the value.
                errs.push(PathError {
                    path: format!("{path}.key"),
                    message: format!("cannot resolve the API key: {e}"),
                });
                None
            }
        },
        (None, Some(hex)) => {
            let d = parse_sha256(hex);
            if d.is_none() {
                errs.push(PathError {
                    path: format!("{path}.key_sha256"),
                    message: "must be 64 hex digits (the SHA-256 of the key)".to_owned(),
                });
            }
            d
        }
        _ => {
            errs.push(PathError {
                path: path.to_owned(),
                message: "set exactly one of key and key_sha256".to_owned(),
            });
            None
        }
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let b = hex.trim().as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The percent-decoded value of the query parameter `name`; `Err` when it is repeated.
fn query_single(query: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if super::credentials::percent_decode(n) != name {
            continue;
        }
        if found.is_some() {
            return Err(());
        }
        found = Some(super::credentials::percent_decode(v));
    }
    Ok(found)
}

/// `path_and_query` without the query parameter `name` (every occurrence).
fn remove_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let n = pair.split_once('=').map_or(*pair, |(n, _)| n);
            super::credentials::percent_decode(n) != name
        })
        .collect();
    let mut out = path.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

/// Does the certificate carry `value` (already lower-case for DNS) in `field`?
fn cert_has(cert: &crate::request::ClientCert, field: CertField, value: &str) -> bool {
    match field {
        CertField::Uri => cert.uri.iter().any(|u| u == value),
        CertField::Dns => cert.dns.iter().any(|d| d.eq_ignore_ascii_case(value)),
        CertField::SubjectCn => cert.subject_cn.iter().any(|c| c == value),
    }
}

/// The header's only value; `Err` when it is repeated.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
        (Some(_), Some(_)) => Err(()),
    }
}

/// Compares `presented` with every key in constant time and returns the
/// matching consumer. All keys are always compared, so the time taken does
/// not depend on which (if any) matched.
fn find_key(keys: &[Key], presented: &[u8]) -> Option<usize> {
    let digest: [u8; 32] = Sha256::digest(presented).into();
    // 0 = none; otherwise consumer index + 1.
    let mut found: u32 = 0;
    for key in keys {
        let eq = key.digest.ct_eq(&digest);
        found.conditional_assign(&key.consumer.saturating_add(1), eq);
    }
    found.checked_sub(1).map(|c| c as usize)
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = split_scheme(value)?;
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then_some(rest)
        .filter(|t| !t.is_empty())
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let rest = value.get(space + 1..)?.trim_ascii();
    Some((&value[..space], rest))
}

/// The API key in a `Proxy-Authorization` value: the Bearer token, or for
/// Basic the password (the username when the password is empty, so both
/// `user:KEY` and `KEY:` work).
fn proxy_credential(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = split_scheme(value)?;
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return (!rest.is_empty()).then(|| rest.to_vec());
    }
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
    let key = if pass.is_empty() { user } else { pass };
    (!key.is_empty()).then(|| key.to_vec())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;
    use crate::test_support::{Req, compile_errors, consumer, denied, policy};

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    fn consumers(unknown: &str) -> serde_json::Value {
        json!({
            "unknown_consumer": { "action": unknown },
            "consumers": [
                { "name": "checkout", "identify": { "header": { "name": "X-Tollgate-Consumer", "value": "checkout" } } },
                { "name": "ci", "identify": { "api_key": { "key": "ci-secret-key" } } },
                { "name": "vendor", "identify": { "api_key": { "key": "vendor-key", "header": "X-Api-Key" } } },
                { "name": "office", "identify": { "source": ["10.1.0.0/16"] } },
                { "name": "build-host", "identify": { "source": ["10.1.2.3"] } },
                { "name": "v6", "identify": { "source": ["2001:db8::/32"] } }
            ]
        })
    }

    #[test]
    fn identifies_each_way() {
        let fwd = || Req::forward("http://api.example.com/x");
        let cases: Vec<(&str, Req, Result<&str, &str>)> = vec![
            (
                "trusted header",
                fwd().header("x-tollgate-consumer", "checkout"),
                Ok("checkout"),
            ),
            (
                "header value unknown",
                fwd().header("x-tollgate-consumer", "other"),
                Err("consumer_unidentified"),
            ),
            (
                "header value case matters",
                fwd().header("x-tollgate-consumer", "Checkout"),
                Err("consumer_unidentified"),
            ),
            (
                "header repeated",
                fwd()
                    .header("x-tollgate-consumer", "checkout")
                    .header("x-tollgate-consumer", "checkout"),
                Err("consumer_unidentified"),
            ),
            (
                "basic password",
                fwd().header("proxy-authorization", &basic("user:ci-secret-key")),
                Ok("ci"),
            ),
            (
                "basic username only",
                fwd().header("proxy-authorization", &basic("ci-secret-key:")),
                Ok("ci"),
            ),
            (
                "basic scheme any case",
                fwd().header(
                    "proxy-authorization",
                    &basic("u:ci-secret-key").replace("Basic", "bAsIc"),
                ),
                Ok("ci"),
            ),
            (
                "bearer",
                fwd().header("proxy-authorization", "Bearer ci-secret-key"),
                Ok("ci"),
            ),
            (
                "bearer wrong",
                fwd().header("proxy-authorization", "Bearer ci-secret-kez"),
                Err("consumer_unidentified"),
            ),
            (
                "bearer prefix of key",
                fwd().header("proxy-authorization", "Bearer ci-secret"),
                Err("consumer_unidentified"),
            ),
            (
                "basic wrong",
                fwd().header("proxy-authorization", &basic("ci:nope")),
                Err("consumer_unidentified"),
            ),
            (
                "basic not base64",
                fwd().header("proxy-authorization", "Basic !!!"),
                Err("consumer_unidentified"),
            ),
            (
                "unknown scheme",
                fwd().header("proxy-authorization", "Digest abc"),
                Err("consumer_unidentified"),
            ),
            (
                "named header",
                fwd().header("x-api-key", "vendor-key"),
                Ok("vendor"),
            ),
            (
                "named header wrong",
                fwd().header("x-api-key", "vendor-kez"),
                Err("consumer_unidentified"),
            ),
            (
                "key in the other location",
                fwd().header("x-api-key", "ci-secret-key"),
                Err("consumer_unidentified"),
            ),
            (
                "bearer on Authorization ignored on forward",
                fwd().header("authorization", "Bearer ci-secret-key"),
                Err("consumer_unidentified"),
            ),
            ("source cidr", fwd().peer("10.1.9.9"), Ok("office")),
            (
                "most specific source wins",
                fwd().peer("10.1.2.3"),
                Ok("build-host"),
            ),
            (
                "ipv4-mapped peer",
                fwd().peer("::ffff:10.1.2.3"),
                Ok("build-host"),
            ),
            ("ipv6 source", fwd().peer("2001:db8::7"), Ok("v6")),
            (
                "source outside",
                fwd().peer("10.2.0.1"),
                Err("consumer_unidentified"),
            ),
            (
                "key beats header",
                fwd()
                    .header("x-tollgate-consumer", "checkout")
                    .header("proxy-authorization", "Bearer ci-secret-key"),
                Ok("ci"),
            ),
            (
                "header beats source",
                fwd()
                    .peer("10.1.2.3")
                    .header("x-tollgate-consumer", "checkout"),
                Ok("checkout"),
            ),
            (
                "wrong key beats header",
                fwd()
                    .header("x-tollgate-consumer", "checkout")
                    .header("x-api-key", "nope"),
                Err("consumer_unidentified"),
            ),
            (
                "wrong key beats source",
                fwd()
                    .peer("10.1.2.3")
                    .header("proxy-authorization", "Bearer nope"),
                Err("consumer_unidentified"),
            ),
            ("nothing presented", fwd(), Err("consumer_unidentified")),
        ];
        let p = policy(consumers("deny"));
        for (name, req, want) in cases {
            let e = req.eval(&p);
            match want {
                Ok(who) => assert_eq!((consumer(&e), denied(&e)), (Some(who), None), "{name}"),
                Err(code) => assert_eq!(denied(&e), Some(code), "{name}"),
            }
            assert!(!e.strip_authorization, "{name}");
            for step in &e.trace {
                assert!(
                    !step.reason.contains("secret-key") && !step.reason.contains("vendor-key"),
                    "{name}: {step:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_callers_follow_the_configured_action() {
        let anon = policy(consumers("anonymous"));
        let deny = policy(consumers("deny"));
        let nobody = Req::forward("http://api.example.com/x");
        let e = nobody.eval(&anon);
        assert_eq!((consumer(&e), denied(&e)), (Some("anonymous"), None));
        let e = nobody.eval(&deny);
        assert_eq!(denied(&e), Some("consumer_unidentified"));
        assert_eq!(e.consumer, None);
        // A wrong key never falls back to anonymous.
        let wrong = nobody.clone().header("proxy-authorization", "Bearer guess");
        assert_eq!(denied(&wrong.eval(&anon)), Some("consumer_unidentified"));
        let wrong = nobody.header("x-api-key", "guess");
        assert_eq!(denied(&wrong.eval(&anon)), Some("consumer_unidentified"));
    }

    #[test]
    fn routes_accept_authorization_bearer_and_strip_it() {
        let cfg = |unknown: &str| {
            let mut c = consumers(unknown);
            c["apis"] =
                json!([{ "name": "gh", "route": "/gh", "upstream": "https://api.github.com" }]);
            c
        };
        let p = policy(cfg("deny"));
        let e = Req::route("/gh/x")
            .header("authorization", "Bearer ci-secret-key")
            .eval(&p);
        assert_eq!((consumer(&e), denied(&e)), (Some("ci"), None));
        assert!(e.strip_authorization);
        // Someone else's token in Authorization is the client's own upstream
        // credential: ignored for identity, and not stripped.
        let e = Req::route("/gh/x")
            .header("authorization", "Bearer ghp_own")
            .header("x-tollgate-consumer", "checkout")
            .eval(&p);
        assert_eq!((consumer(&e), denied(&e)), (Some("checkout"), None));
        assert!(!e.strip_authorization);
        let e = Req::route("/gh/x")
            .header("authorization", "Bearer ghp_own")
            .eval(&policy(cfg("anonymous")));
        assert_eq!((consumer(&e), denied(&e)), (Some("anonymous"), None));
        assert!(!e.strip_authorization);
    }

    #[test]
    fn compares_every_key() {
        let keys: Vec<Key> = ["aaaa", "bbbbbbbb", "cccc"]
            .iter()
            .zip(7u32..)
            .map(|(k, c)| Key {
                digest: Sha256::digest(k.as_bytes()).into(),
                consumer: c,
            })
            .collect();
        assert_eq!(find_key(&keys, b"aaaa"), Some(7));
        assert_eq!(find_key(&keys, b"bbbbbbbb"), Some(8));
        assert_eq!(find_key(&keys, b"cccc"), Some(9));
        assert_eq!(find_key(&keys, b"cccd"), None);
        assert_eq!(find_key(&keys, b""), None);
        assert_eq!(find_key(&[], b"aaaa"), None);
    }

    #[test]
    fn parses_proxy_credentials() {
        let cases: [(&str, Option<&str>); 8] = [
            ("Bearer tok", Some("tok")),
            ("bearer   tok  ", Some("tok")),
            ("Bearer ", None),
            ("Bearer", None),
            (&basic("u:p"), Some("p")),
            (&basic("k:"), Some("k")),
            (&basic(":"), None),
            (&basic("no-colon"), None),
        ];
        for (value, want) in cases {
            assert_eq!(
                proxy_credential(value.as_bytes()).as_deref(),
                want.map(str::as_bytes),
                "{value}"
            );
        }
    }

    #[test]
    fn strip_headers_lists_identity_and_key_headers() {
        let p = policy(consumers("deny"));
        let names: Vec<&str> = p.strip_headers().iter().map(|h| h.as_str()).collect();
        assert_eq!(names, ["x-tollgate-consumer", "x-api-key"]);
        assert!(!format!("{p:?}").contains("ci-secret-key"));
    }

    #[test]
    fn compile_errors_name_the_key_and_never_the_secret() {
        let errs = compile_errors(json!({ "consumers": [
            { "name": "a", "identify": { "api_key": { "key": "${env:TOLLGATE_TEST_SURELY_UNSET_VAR}" } } },
            { "name": "b", "identify": { "api_key": { "key": "hunter2-dup" } } },
            { "name": "c", "identify": { "api_key": { "key": "hunter2-dup" } } },
            { "name": "d", "identify": { "api_key": { "key": "k-d", "header": "bad header" } } },
            { "name": "e", "identify": { "header": { "name": "x-who", "value": "" } } },
            { "name": "f", "identify": { "source": ["10.0.0.0/8", "10.0.0.300"] } },
            { "name": "g", "identify": { "source": [] } },
            { "name": "h", "identify": { "header": { "name": "x-who", "value": "h" } } },
            { "name": "i", "identify": { "header": { "name": "X-Who", "value": "h" } } }
        ]}));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "consumers[0].identify.api_key.key",
                "consumers[2].identify.api_key.key",
                "consumers[3].identify.api_key.header",
                "consumers[4].identify.header.value",
                "consumers[5].identify.source[1]",
                "consumers[6].identify.source",
                "consumers[8].identify.header.value",
            ]
        );
        assert!(errs[0].message.contains("TOLLGATE_TEST_SURELY_UNSET_VAR"));
        for e in &errs {
            assert!(!e.message.contains("hunter2"), "{e:?}");
        }
    }

    fn cert(cn: &str, dns: &[&str], uri: &[&str]) -> crate::request::ClientCert {
        crate::request::ClientCert {
            subject_cn: vec![cn.to_owned()],
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            uri: uri.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn client_certificates_identify_by_uri_then_dns_then_cn() {
        let p = policy(json!({
            "unknown_consumer": { "action": "deny" },
            "consumers": [
                { "name": "by-cn", "identify": { "client_cert": { "subject_cn": "svc" } } },
                { "name": "by-dns", "identify": { "client_cert": { "dns": "Svc.Example" } } },
                { "name": "by-uri", "identify": { "client_cert": { "uri": "spiffe://t/ns/a" } } },
                { "name": "keyed", "identify": { "api_key": { "key": "k1" } } }
            ]
        }));
        let fwd = || Req::forward("http://api.example.com/x");
        let who = |r: Req| {
            let e = r.eval(&p);
            (consumer(&e).map(str::to_owned), denied(&e))
        };
        let all = cert("svc", &["svc.example"], &["spiffe://t/ns/a"]);
        assert_eq!(
            who(fwd().client_cert(all.clone())).0.as_deref(),
            Some("by-uri")
        );
        // DNS names compare case-insensitively; CN and URI exactly.
        let dns = cert("other", &["SVC.example"], &["spiffe://t/ns/A"]);
        assert_eq!(who(fwd().client_cert(dns)).0.as_deref(), Some("by-dns"));
        let cn = cert("svc", &[], &[]);
        assert_eq!(who(fwd().client_cert(cn)).0.as_deref(), Some("by-cn"));
        // A certificate no rule names falls through to the other methods.
        let none = cert("Svc", &[], &["spiffe://t/ns/b"]);
        assert_eq!(
            who(fwd().client_cert(none)).1,
            Some("consumer_unidentified")
        );
        // An API key is tried first.
        let keyed = fwd()
            .client_cert(all)
            .header("proxy-authorization", "Bearer k1");
        assert_eq!(who(keyed).0.as_deref(), Some("keyed"));
        // No certificate (the plain listener): no certificate rule matches.
        assert_eq!(who(fwd()).1, Some("consumer_unidentified"));
    }

    #[test]
    fn client_cert_rules_must_be_single_and_unique() {
        let errs = compile_errors(json!({
            "consumers": [
                { "name": "a", "identify": { "client_cert": { "uri": "spiffe://t/a", "dns": "a" } } },
                { "name": "b", "identify": { "client_cert": { "uri": "spiffe://t/b" } } },
                { "name": "c", "identify": { "client_cert": { "uri": "spiffe://t/b" } } }
            ]
        }));
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"consumers[0].identify.client_cert"),
            "{errs:?}"
        );
        assert!(
            paths.contains(&"consumers[2].identify.client_cert"),
            "{errs:?}"
        );
    }

    #[test]
    fn query_keys_identify_and_are_removed_from_the_target() {
        let digest: String = Sha256::digest(b"hashed-key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let p = policy(json!({
            "unknown_consumer": { "action": "deny" },
            "apis": [{ "name": "in", "route": "/in", "upstream": "http://127.0.0.1:9" }],
            "consumers": [
                { "name": "q", "identify": { "api_key": { "key": "query-key", "query": "api_key" } } },
                { "name": "h", "identify": { "api_key": { "key_sha256": digest, "header": "x-api-key" } } }
            ]
        }));
        let e = Req::route("/in/x?a=1&api_key=query-key&b=2").eval(&p);
        assert_eq!((consumer(&e), denied(&e)), (Some("q"), None));
        let target = e.target.as_ref().map(|t| t.path_and_query.as_str());
        assert_eq!(target, Some("/x?a=1&b=2"));
        let e = Req::route("/in/x?api_key=query%2Dkey").eval(&p);
        assert_eq!(consumer(&e), Some("q"));
        assert_eq!(
            e.target.as_ref().map(|t| t.path_and_query.as_str()),
            Some("/x")
        );
        // Wrong or repeated keys are refused, never anonymous.
        for q in [
            "/in/x?api_key=nope",
            "/in/x?api_key=query-key&api_key=query-key",
        ] {
            assert_eq!(
                denied(&Req::route(q).eval(&p)),
                Some("consumer_unidentified"),
                "{q}"
            );
        }
        // A hashed key matches the key it is the digest of, and nothing else.
        let e = Req::route("/in/x")
            .header("x-api-key", "hashed-key")
            .eval(&p);
        assert_eq!(consumer(&e), Some("h"));
        let e = Req::route("/in/x")
            .header("x-api-key", "hashed-kez")
            .eval(&p);
        assert_eq!(denied(&e), Some("consumer_unidentified"));
    }

    #[test]
    fn api_key_settings_are_checked() {
        let errs = compile_errors(json!({
            "consumers": [
                { "name": "a", "identify": { "api_key": { "key": "k", "key_sha256": "00" } } },
                { "name": "b", "identify": { "api_key": { "key_sha256": "xyz" } } },
                { "name": "c", "identify": { "api_key": { "key": "k2", "header": "x-k", "query": "k" } } },
                { "name": "d", "identify": { "api_key": { "key": "k3", "query": "a&b" } } },
                { "name": "e", "identify": { "api_key": { "key_sha256": "015f7e6bc5aeaf483724089e9252cc13b50951a6b69412522765cff4d780306e" } } }
            ]
        }));
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "consumers[0].identify.api_key",
                "consumers[1].identify.api_key.key_sha256",
                "consumers[2].identify.api_key",
                "consumers[3].identify.api_key.query",
                // sha256("k2"): the key consumers[2] already uses.
                "consumers[4].identify.api_key.key",
            ],
            "{errs:?}"
        );
    }
}

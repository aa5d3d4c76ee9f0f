//! Credentials stage: the API key the third party expects is injected by
//! Tollgate, last, just before the request goes upstream — a header
//! (`Authorization: Bearer …`), a query parameter, HTTP Basic, or an OAuth 2.0
//! client-credentials token (fetched by the proxy's `oauth` module, which
//! needs sockets; this file compiles its request).
//!
//! Caller-supplied credentials are removed first: every header and query
//! parameter this API injects (for any of its keys) always, and with
//! `strip_caller_credentials: true` (the default) also `Authorization` and
//! `Proxy-Authorization` — so a caller can neither override nor learn the key.
//!
//! With several `keys`, each request uses one, picked `round_robin` or
//! `least_used`, skipping keys the provider has put in back-off
//! ([`ApiCredentials::skip_key`]). Only key *names* are ever shown.
//!
//! Secrets are resolved when the configuration is compiled, so a reload
//! re-reads them, and a missing one is a configuration error at its key path.
//! The only refusal this stage causes is at the proxy: no OAuth token can be
//! obtained (503 `credential_unavailable`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use tollgate_config::{
    BasicCredentials, ClientAuth, Config, Credentials, OAuth2Credentials, Rotation, Secret,
    SecretTemplate,
};

use crate::pipeline::PathError;
use crate::stage::limits::Limits;

/// The client-credentials token request for one key, ready to send.
pub struct OAuth2Spec {
    /// The token endpoint.
    pub token_url: Uri,
    /// The client id (not secret; for logs).
    pub client_id: String,
    /// Refresh this long before the token expires.
    pub refresh_before: Duration,
    /// Time allowed for one token request.
    pub timeout: Duration,
    /// `application/x-www-form-urlencoded` body (may contain the client secret).
    body: Secret,
    /// `Authorization: Basic …` for `client_auth: basic` (marked sensitive).
    authorization: Option<HeaderValue>,
}

impl OAuth2Spec {
    /// The form body of the token request. Never log it.
    pub fn form_body(&self) -> &str {
        self.body.expose()
    }
    /// The client authentication header, when `client_auth: basic`.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

impl PartialEq for OAuth2Spec {
    fn eq(&self, o: &Self) -> bool {
        self.token_url == o.token_url
            && self.client_id == o.client_id
            && self.refresh_before == o.refresh_before
            && self.timeout == o.timeout
            && self.body == o.body
            && self.authorization == o.authorization
    }
}

impl fmt::Debug for OAuth2Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Spec")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

enum Kind {
    Header(HeaderName, HeaderValue),
    /// Percent-encoded name and value.
    Query(String, Secret),
    OAuth2(Arc<OAuth2Spec>),
}

/// One key of an API: what is injected, and its usage and back-off state.
pub struct CredentialKey {
    /// The key's name (`default` for a single unnamed credential). Safe to log.
    pub name: Arc<str>,
    kind: Kind,
    /// What `tollgate explain` shows: kind and references, never values.
    shown: String,
    uses: AtomicU64,
    /// Milliseconds since the stage's base instant + 1 until which the
    /// provider wants this key left alone; 0 when not in back-off.
    skip_until: AtomicU64,
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialKey({:?}: {})", self.name, self.shown)
    }
}

impl CredentialKey {
    /// The OAuth token request to run for this key, if it is an OAuth key.
    pub fn oauth2(&self) -> Option<&Arc<OAuth2Spec>> {
        match &self.kind {
            Kind::OAuth2(s) => Some(s),
            _ => None,
        }
    }
    /// Requests that used this key since the configuration was loaded.
    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }
}

/// One API's compiled credentials.
#[derive(Debug)]
pub struct ApiCredentials {
    keys: Vec<CredentialKey>,
    rotation: Rotation,
    next: AtomicUsize,
    /// Headers removed before injection.
    strip_headers: Vec<HeaderName>,
    /// Query parameter names (decoded) removed before injection.
    strip_query: Vec<String>,
    allow_plaintext: bool,
    base: Instant,
    /// The keys' own `limits`, compiled as one list per key (same index as `keys`); `None`
    /// when no key has limits.
    key_limits: Option<KeyLimits>,
}

/// Credential keys' own limits: a limits stage whose "APIs" are the keys.
#[derive(Debug)]
struct KeyLimits {
    api: Arc<str>,
    api_index: usize,
    report_mode: bool,
    limits: Limits,
    /// Per key, what `tollgate explain` shows of its limits (empty: none).
    shown: Vec<String>,
}

/// Loopback names and addresses: plain HTTP there never leaves the machine.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback())
}

impl ApiCredentials {
    pub fn keys(&self) -> &[CredentialKey] {
        &self.keys
    }

    /// Whether a key may be sent to `host` over `scheme`: always over
    /// `https` and to loopback, over plain `http` only with `allow_plaintext`.
    pub fn may_send(&self, scheme: &str, host: &str) -> bool {
        scheme.eq_ignore_ascii_case("https") || self.allow_plaintext || is_loopback(host)
    }

    /// Picks the key for one request and counts its use.
    pub fn pick(&self) -> &CredentialKey {
        self.pick_at(Instant::now())
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn pick_at(&self, now: Instant) -> &CredentialKey {
        let now_ms = self.millis(now);
        let n = self.keys.len();
        let ready = |k: &CredentialKey| {
            let until = k.skip_until.load(Ordering::Relaxed);
            until == 0 || until <= now_ms + 1
        };
        let chosen = match self.rotation {
            // A key in back-off gives up its turn (the counter moves past it),
            // so the others keep an even share.
            Rotation::RoundRobin => (0..n)
                .map(|_| self.next.fetch_add(1, Ordering::Relaxed) % n)
                .find(|&i| ready(&self.keys[i])),
            Rotation::LeastUsed => (0..n)
                .filter(|&i| ready(&self.keys[i]))
                .min_by_key(|&i| self.keys[i].uses()),
        };
        // Every key in back-off: use the one free soonest (provider back-off,
        // when enabled, answers for the API before this matters).
        let i = chosen
            .or_else(|| (0..n).min_by_key(|&i| self.keys[i].skip_until.load(Ordering::Relaxed)))
            .unwrap_or(0);
        let key = &self.keys[i];
        key.uses.fetch_add(1, Ordering::Relaxed);
        key
    }

    /// The key [`Self::pick`] would choose now, without counting a use or moving the
    /// round-robin turn (the response cache's `credential` key part looks it up before the
    /// request is forwarded; the forward then prefers it with [`Self::pick_preferred`]).
    pub fn peek(&self) -> &CredentialKey {
        let now_ms = self.millis(Instant::now());
        let n = self.keys.len();
        let ready = |k: &CredentialKey| {
            let until = k.skip_until.load(Ordering::Relaxed);
            until == 0 || until <= now_ms + 1
        };
        let chosen = match self.rotation {
            Rotation::RoundRobin => {
                let start = self.next.load(Ordering::Relaxed);
                (0..n)
                    .map(|j| (start + j) % n)
                    .find(|&i| ready(&self.keys[i]))
            }
            Rotation::LeastUsed => (0..n)
                .filter(|&i| ready(&self.keys[i]))
                .min_by_key(|&i| self.keys[i].uses()),
        };
        let i = chosen
            .or_else(|| (0..n).min_by_key(|&i| self.keys[i].skip_until.load(Ordering::Relaxed)))
            .unwrap_or(0);
        &self.keys[i]
    }

    /// Uses the key named `name` when it exists and is not in back-off (moving the
    /// round-robin turn on by one), else picks as [`Self::pick`] does.
    pub fn pick_preferred(&self, name: &str) -> &CredentialKey {
        let now_ms = self.millis(Instant::now());
        let found = self.keys.iter().find(|k| {
            let until = k.skip_until.load(Ordering::Relaxed);
            &*k.name == name && (until == 0 || until <= now_ms + 1)
        });
        match found {
            Some(k) => {
                self.next.fetch_add(1, Ordering::Relaxed);
                k.uses.fetch_add(1, Ordering::Relaxed);
                k
            }
            None => self.pick(),
        }
    }

    /// Whether any key has its own `limits` (then the proxy picks with [`Self::candidates`],
    /// [`Self::key_plan`] and [`Self::take`] instead of [`Self::pick`]).
    pub fn has_key_limits(&self) -> bool {
        self.key_limits.is_some()
    }

    /// Key indexes in the order one request should try them: keys not in back-off in rotation
    /// order (round robin: from this request's turn, which advances by one; least used: fewest
    /// uses first), then keys in back-off, the one free soonest first. Counts no use.
    pub fn candidates(&self) -> Vec<usize> {
        let now_ms = self.millis(Instant::now());
        let n = self.keys.len();
        let until = |i: usize| self.keys[i].skip_until.load(Ordering::Relaxed);
        let ready = |i: &usize| {
            let u = until(*i);
            u == 0 || u <= now_ms + 1
        };
        let mut order: Vec<usize> = match self.rotation {
            Rotation::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|j| (start + j) % n).collect()
            }
            Rotation::LeastUsed => {
                let mut v: Vec<usize> = (0..n).collect();
                v.sort_by_key(|&i| self.keys[i].uses());
                v
            }
        };
        let (mut first, mut parked): (Vec<usize>, Vec<usize>) = order.drain(..).partition(ready);
        parked.sort_by_key(|&i| until(i));
        first.extend(parked);
        first
    }

    /// The key at `index` (from [`Self::candidates`]), counting its use.
    pub fn take(&self, index: usize) -> Option<&CredentialKey> {
        let key = self.keys.get(index)?;
        key.uses.fetch_add(1, Ordering::Relaxed);
        Some(key)
    }

    /// The plan of key `index`'s own limits for a request of `consumer` with `headers` (for
    /// the proxy's admission step), or `None` when that key has no limits. Limit names are
    /// `<key>/<limit>`; the plan's API is the key's API.
    pub fn key_plan(
        &self,
        index: usize,
        consumer: &str,
        headers: &HeaderMap,
    ) -> Option<crate::LimitPlan> {
        let k = self.key_limits.as_ref()?;
        k.limits
            .plan_for(index, k.api_index, &k.api, consumer, headers, k.report_mode)
    }

    /// Hook for provider back-off per key: leave `key` out of rotation until
    /// `until` (while another key is available). Returns false if the API has
    /// no key of that name.
    pub fn skip_key(&self, key: &str, until: Instant) -> bool {
        let Some(k) = self.keys.iter().find(|k| &*k.name == key) else {
            return false;
        };
        k.skip_until
            .store(self.millis(until).saturating_add(1), Ordering::Relaxed);
        true
    }

    /// Removes caller-supplied credentials from `headers`, and the API's
    /// injected query parameters from `path_and_query` (returned when changed).
    pub fn strip(&self, headers: &mut HeaderMap, path_and_query: &str) -> Option<String> {
        for h in &self.strip_headers {
            headers.remove(h);
        }
        if self.strip_query.is_empty() {
            return None;
        }
        let (path, query) = path_and_query.split_once('?')?;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                let name = percent_decode(name);
                !self.strip_query.contains(&name)
            })
            .collect();
        let mut out = path.to_owned();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        Some(out)
    }

    /// Injects `key` into the request. `bearer` is the `Authorization` value
    /// for an OAuth key (from the proxy's token cache). Returns the new path
    /// and query when a query parameter was added.
    pub fn inject(
        &self,
        key: &CredentialKey,
        headers: &mut HeaderMap,
        path_and_query: &str,
        bearer: Option<HeaderValue>,
    ) -> Option<String> {
        match &key.kind {
            Kind::Header(name, value) => {
                headers.insert(name.clone(), value.clone());
                None
            }
            Kind::OAuth2(_) => {
                if let Some(v) = bearer {
                    headers.insert(AUTHORIZATION, v);
                }
                None
            }
            Kind::Query(name, value) => {
                let sep = if path_and_query.contains('?') {
                    '&'
                } else {
                    '?'
                };
                Some(format!("{path_and_query}{sep}{name}={}", value.expose()))
            }
        }
    }

    /// One line per key for `tollgate explain`: kinds, names and secret
    /// references, values always `<redacted>`.
    pub fn describe(&self) -> Vec<String> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let limits = self
                    .key_limits
                    .as_ref()
                    .and_then(|l| l.shown.get(i))
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("; own limits: {s}"))
                    .unwrap_or_default();
                format!("key {:?}: {}{limits}", &*k.name, k.shown)
            })
            .collect()
    }

    pub fn rotation(&self) -> &'static str {
        match self.rotation {
            Rotation::RoundRobin => "round_robin",
            Rotation::LeastUsed => "least_used",
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str, space_plus: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' if space_plus => out.push('+'),
            _ => {
                use std::fmt::Write as _;
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Decodes `%XX` and `+` (a caller must not sneak `api%5Fkey` past the strip).
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pieces of one credential, as written at the API or in `keys[]`.
struct Source<'a> {
    header: Option<&'a String>,
    query: Option<&'a String>,
    value: Option<&'a SecretTemplate>,
    basic: Option<&'a BasicCredentials>,
    oauth2: Option<&'a OAuth2Credentials>,
}

fn err(errs: &mut Vec<PathError>, path: impl Into<String>, message: impl Into<String>) {
    errs.push(PathError {
        path: path.into(),
        message: message.into(),
    });
}

fn resolve(t: &SecretTemplate, path: &str, errs: &mut Vec<PathError>) -> Option<Secret> {
    match t.resolve() {
        Ok(s) => Some(s),
        Err(e) => {
            err(errs, path, e.to_string());
            None
        }
    }
}

fn sensitive(v: &str, path: &str, errs: &mut Vec<PathError>) -> Option<HeaderValue> {
    match HeaderValue::from_str(v) {
        Ok(mut h) => {
            h.set_sensitive(true);
            Some(h)
        }
        Err(_) => {
            // Never echo the value: it holds the secret.
            err(
                errs,
                path,
                "the resolved value is not a valid header value (control characters or line breaks?)",
            );
            None
        }
    }
}

fn basic_value(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn compile_oauth2(
    o: &OAuth2Credentials,
    path: &str,
    errs: &mut Vec<PathError>,
) -> Option<OAuth2Spec> {
    let url = o.token_url.parse::<Uri>().ok().filter(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    let Some(token_url) = url else {
        err(
            errs,
            format!("{path}.token_url"),
            format!("{:?} is not an http(s) URL", o.token_url),
        );
        return None;
    };
    if o.client_id.is_empty() {
        err(errs, format!("{path}.client_id"), "must not be empty");
        return None;
    }
    let secret = match o.client_secret.resolve() {
        Ok(s) => s,
        Err(e) => {
            err(errs, format!("{path}.client_secret"), e.to_string());
            return None;
        }
    };
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    if !o.scopes.is_empty() {
        form.push(("scope", o.scopes.join(" ")));
    }
    if let Some(a) = &o.audience {
        form.push(("audience", a.clone()));
    }
    let authorization = match o.client_auth {
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
            let v = basic_value(
                &percent_encode(&o.client_id, true),
                &percent_encode(secret.expose(), true),
            );
            Some(sensitive(&v, &format!("{path}.client_secret"), errs)?)
        }
        ClientAuth::Body => {
            form.push(("client_id", o.client_id.clone()));
            form.push(("client_secret", secret.expose().to_owned()));
            None
        }
    };
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v, true)))
        .collect::<Vec<_>>()
        .join("&");
    Some(OAuth2Spec {
        token_url,
        client_id: o.client_id.clone(),
        refresh_before: o.refresh_before.get(),
        timeout: o.timeout.get(),
        body: Secret::new(body),
        authorization,
    })
}

fn compile_key(
    name: &str,
    src: &Source<'_>,
    path: &str,
    errs: &mut Vec<PathError>,
) -> Option<CredentialKey> {
    let kinds = [
        src.header.is_some(),
        src.query.is_some(),
        src.basic.is_some(),
        src.oauth2.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        err(
            errs,
            path,
            "set exactly one of: header + value, query + value, basic, oauth2 (or keys)",
        );
        return None;
    }
    if src.value.is_some() && src.header.is_none() && src.query.is_none() {
        err(
            errs,
            format!("{path}.value"),
            "value goes with header or query",
        );
        return None;
    }
    let (kind, shown) = if let Some(h) = src.header {
        let Ok(hname) = HeaderName::from_bytes(h.as_bytes()) else {
            err(
                errs,
                format!("{path}.header"),
                format!("{h:?} is not a valid header name"),
            );
            return None;
        };
        if matches!(
            hname.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding" | "proxy-authorization"
        ) {
            err(
                errs,
                format!("{path}.header"),
                format!("{hname} cannot carry a credential"),
            );
            return None;
        }
        let Some(t) = src.value else {
            err(errs, format!("{path}.value"), "header needs a value");
            return None;
        };
        let v = resolve(t, &format!("{path}.value"), errs)?;
        let v = sensitive(v.expose(), &format!("{path}.value"), errs)?;
        let shown = format!("header {hname} = <redacted> (value {t})");
        (Kind::Header(hname, v), shown)
    } else if let Some(q) = src.query {
        if q.is_empty() {
            err(errs, format!("{path}.query"), "must not be empty");
            return None;
        }
        let Some(t) = src.value else {
            err(errs, format!("{path}.value"), "query needs a value");
            return None;
        };
        let v = resolve(t, &format!("{path}.value"), errs)?;
        let shown = format!("query parameter {q} = <redacted> (value {t})");
        let enc = Secret::new(percent_encode(v.expose(), false));
        (Kind::Query(percent_encode(q, false), enc), shown)
    } else if let Some(b) = src.basic {
        let user = resolve(&b.username, &format!("{path}.basic.username"), errs)?;
        let pass = resolve(&b.password, &format!("{path}.basic.password"), errs)?;
        if user.expose().contains(':') {
            err(
                errs,
                format!("{path}.basic.username"),
                "must not contain ':' (RFC 7617)",
            );
            return None;
        }
        let v = sensitive(
            &basic_value(user.expose(), pass.expose()),
            &format!("{path}.basic"),
            errs,
        )?;
        let shown = format!(
            "basic auth = <redacted> (username {}, password {})",
            b.username, b.password
        );
        (Kind::Header(AUTHORIZATION, v), shown)
    } else {
        let o = src.oauth2?;
        let spec = compile_oauth2(o, &format!("{path}.oauth2"), errs)?;
        let shown = format!(
            "oauth2 client credentials from {} (client_id {}, secret {}) = Bearer <redacted>",
            o.token_url, o.client_id, o.client_secret
        );
        (Kind::OAuth2(Arc::new(spec)), shown)
    };
    Some(CredentialKey {
        name: Arc::from(name),
        kind,
        shown,
        uses: AtomicU64::new(0),
        skip_until: AtomicU64::new(0),
    })
}

fn compile_api(c: &Credentials, path: &str, errs: &mut Vec<PathError>) -> Option<ApiCredentials> {
    let single = Source {
        header: c.header.as_ref(),
        query: c.query.as_ref(),
        value: c.value.as_ref(),
        basic: c.basic.as_ref(),
        oauth2: c.oauth2.as_ref(),
    };
    let has_single = single.header.is_some()
        || single.query.is_some()
        || single.value.is_some()
        || single.basic.is_some()
        || single.oauth2.is_some();
    let before = errs.len();
    let mut keys = Vec::new();
    if c.keys.is_empty() {
        keys.extend(compile_key("default", &single, path, errs));
    } else if has_single {
        err(
            errs,
            path,
            "use either keys or a single credential (header, query, basic, oauth2), not both",
        );
    } else {
        for (i, k) in c.keys.iter().enumerate() {
            let p = format!("{path}.keys[{i}]");
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if k.name.is_empty() || !k.name.chars().all(valid) {
                err(
                    errs,
                    format!("{p}.name"),
                    "must be non-empty: letters, digits, '_', '.', '-' (it is logged and a metrics label)",
                );
                continue;
            }
            if c.keys[..i].iter().any(|o| o.name == k.name) {
                err(
                    errs,
                    format!("{p}.name"),
                    format!("duplicate key name {:?}", k.name),
                );
                continue;
            }
            let src = Source {
                header: k.header.as_ref(),
                query: k.query.as_ref(),
                value: k.value.as_ref(),
                basic: k.basic.as_ref(),
                oauth2: k.oauth2.as_ref(),
            };
            keys.extend(compile_key(&k.name, &src, &p, errs));
        }
    }
    if errs.len() > before || keys.is_empty() {
        return None;
    }
    let mut strip_headers: Vec<HeaderName> = Vec::new();
    let mut strip_query: Vec<String> = Vec::new();
    if c.strip_caller_credentials {
        strip_headers.extend([AUTHORIZATION, PROXY_AUTHORIZATION]);
    }
    let mut add_header = |h: HeaderName| {
        if !strip_headers.contains(&h) {
            strip_headers.push(h);
        }
    };
    for k in &keys {
        match &k.kind {
            Kind::Header(h, _) => add_header(h.clone()),
            Kind::OAuth2(_) => add_header(AUTHORIZATION),
            Kind::Query(q, _) => {
                let q = percent_decode(q);
                if !strip_query.contains(&q) {
                    strip_query.push(q);
                }
            }
        }
    }
    Some(ApiCredentials {
        keys,
        rotation: c.rotation,
        next: AtomicUsize::new(0),
        strip_headers,
        strip_query,
        allow_plaintext: c.allow_plaintext,
        base: Instant::now(),
        key_limits: None,
    })
}

/// Compiles the keys' own `limits` of API `i` as a limits stage whose entries are the keys
/// (limit names become `<key>/<limit>`), with the restrictions of key limits checked first.
fn compile_key_limits(cfg: &Config, i: usize, errs: &mut Vec<PathError>) -> Option<KeyLimits> {
    let api = &cfg.apis[i];
    let c = api.credentials.as_ref()?;
    if c.keys.iter().all(|k| k.limits.is_empty()) {
        return None;
    }
    let before = errs.len();
    let mut synthetic = Config::default();
    let mut shown = Vec::with_capacity(c.keys.len());
    for (k, key) in c.keys.iter().enumerate() {
        shown.push(
            key.limits
                .iter()
                .map(|l| {
                    let scope = match l.scope {
                        tollgate_config::LimitScope::Local => "local",
                        tollgate_config::LimitScope::Global => "global",
                    };
                    format!("{} ({} per {}, {scope})", l.name, l.requests, l.per)
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut a = api.clone();
        a.limits = Vec::with_capacity(key.limits.len());
        for (j, l) in key.limits.iter().enumerate() {
            let at = format!("apis[{i}].credentials.keys[{k}].limits[{j}]");
            let valid = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-');
            if l.name.is_empty() || !l.name.chars().all(valid) {
                err(
                    errs,
                    format!("{at}.name"),
                    "must be non-empty: letters, digits, '_', '.', '-'",
                );
            } else if key.limits[..j].iter().any(|o| o.name == l.name) {
                err(
                    errs,
                    format!("{at}.name"),
                    format!("duplicate limit name {:?} in this key", l.name),
                );
            }
            if l.on_limit.queue().is_some() {
                err(
                    errs,
                    format!("{at}.on_limit"),
                    "a key's limits cannot queue: an exhausted key is skipped and another key is tried",
                );
            }
            if l.shares.is_some() || l.borrow.is_some() || l.default_share.is_some() {
                err(
                    errs,
                    format!("{at}.shares"),
                    "shares are not supported on a key's limits (put them on the API's limits)",
                );
            }
            if l.cost
                .as_ref()
                .is_some_and(|c| c.response_bytes || c.response_json.is_some())
            {
                err(
                    errs,
                    format!("{at}.cost"),
                    "a key's limits can only cost 1 or a request header's value",
                );
            }
            if l.scope == tollgate_config::LimitScope::Global && cfg.state.redis.is_none() {
                err(
                    errs,
                    format!("{at}.scope"),
                    "`scope: global` needs `state.redis` (the shared counter store)",
                );
            }
            let mut l = l.clone();
            l.name = format!("{}/{}", key.name, l.name);
            a.limits.push(l);
        }
        synthetic.apis.push(a);
    }
    let mut inner = Vec::new();
    let limits = Limits::compile(&synthetic, &mut inner);
    for e in inner {
        // `apis[k].limits[j]…` of the synthetic config is `keys[k].limits[j]…` of API i.
        let path = match e.path.strip_prefix("apis[") {
            Some(rest) => format!("apis[{i}].credentials.keys[{rest}"),
            None => e.path,
        };
        errs.push(PathError {
            path,
            message: e.message,
        });
    }
    if errs.len() > before {
        return None;
    }
    Some(KeyLimits {
        api: Arc::from(api.name.as_str()),
        api_index: i,
        report_mode: cfg.report_only || api.mode == tollgate_config::Mode::Report,
        limits,
        shown,
    })
}

/// Every API's compiled credentials.
#[derive(Debug, Default)]
pub(crate) struct CredentialStage {
    apis: HashMap<Arc<str>, ApiCredentials>,
}

impl CredentialStage {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut out = Self::default();
        for (i, api) in cfg.apis.iter().enumerate() {
            let Some(c) = &api.credentials else { continue };
            // A route to a plain-http upstream would send the key in clear
            // text on every request: say so at load time.
            let plain = api
                .upstream
                .as_deref()
                .and_then(|u| u.parse::<Uri>().ok())
                .filter(|u| u.scheme_str() == Some("http"));
            if let Some(u) = plain
                && !c.allow_plaintext
                && !u.host().is_some_and(is_loopback)
            {
                err(
                    errs,
                    format!("apis[{i}].upstream"),
                    "the API's credentials would be sent over plain http: use https, or set credentials.allow_plaintext: true",
                );
            }
            if let Some(mut compiled) = compile_api(c, &format!("apis[{i}].credentials"), errs) {
                compiled.key_limits = compile_key_limits(cfg, i, errs);
                out.apis.insert(Arc::from(api.name.as_str()), compiled);
            }
        }
        out
    }

    pub(crate) fn get(&self, api: &str) -> Option<&ApiCredentials> {
        self.apis.get(api)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &ApiCredentials)> {
        self.apis.iter()
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;

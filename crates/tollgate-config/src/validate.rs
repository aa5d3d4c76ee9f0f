//! Cross-field rules that the types alone cannot express: unique names,
//! references between consumers and APIs, route and upstream shapes, listener
//! safety, and the syntax of address entries.
//!
//! Path and host *pattern* syntax (`*`, `**`, `{param}`) is checked by
//! `tollgate-policy` when it compiles the configuration; this module only
//! checks the plain shape of host names.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::error::ConfigError;
use crate::model::{Api, Config, Consumer, Identify, LimitAlgorithm};
use crate::source_map::SourceMap;

/// Consumer name given to callers no consumer matches, when `unknown_consumer.action: anonymous`.
pub const ANONYMOUS_CONSUMER: &str = "anonymous";

/// One `network_guard.allow` / `network_guard.deny` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardEntry {
    /// A network; a bare address is a /32 (IPv4) or /128 (IPv6) network.
    Net(IpNet),
    /// One address and port (`10.0.0.5:8443`, `[fd00::1]:443`).
    SocketAddr(SocketAddr),
}

/// Parses a guard entry: an IP address, a CIDR, or `ip:port` (IPv6 as `[::1]:443`).
pub fn parse_guard_entry(s: &str) -> Result<GuardEntry, String> {
    if s.contains('/') {
        return s
            .parse::<IpNet>()
            .map(GuardEntry::Net)
            .map_err(|_| format!("invalid CIDR {s:?}: expected e.g. 10.0.0.0/8 or fd00::/8"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(GuardEntry::Net(IpNet::from(ip)));
    }
    match s.parse::<SocketAddr>() {
        Ok(sa) if sa.port() == 0 => Err(format!("invalid entry {s:?}: port must not be 0")),
        Ok(sa) => Ok(GuardEntry::SocketAddr(sa)),
        Err(_) => Err(format!(
            "invalid entry {s:?}: expected an IP address, a CIDR (10.0.0.0/8) or ip:port ([::1]:443 for IPv6)"
        )),
    }
}

/// Checks every cross-field rule and returns all violations, located with `source`.
pub fn validate(cfg: &Config, source: &SourceMap) -> Vec<ConfigError> {
    let mut v = Validator {
        source,
        errors: Vec::new(),
    };
    v.listeners(cfg);
    v.guard(cfg);
    v.limits(cfg);
    v.apis(&cfg.apis);
    v.consumers(&cfg.consumers, &cfg.apis);
    v.errors
}

struct Validator<'a> {
    source: &'a SourceMap,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, path: impl AsRef<str>, message: impl Into<String>) {
        self.errors.push(self.source.locate(path.as_ref(), message));
    }

    fn listeners(&mut self, cfg: &Config) {
        let (proxy, admin) = (cfg.listen.proxy, cfg.listen.admin);
        // Port 0 asks the OS for a fresh port, so two such listeners never collide.
        if proxy == admin && proxy.port() != 0 {
            self.err(
                "listen.admin",
                format!("admin listener {admin} is the same address as the proxy listener"),
            );
        }
        if !admin.ip().is_loopback() && cfg.admin.token.is_none() {
            self.err(
                "listen.admin",
                format!("admin listener {admin} is not on loopback: set admin.token to protect it"),
            );
        }
    }

    fn guard(&mut self, cfg: &Config) {
        for (list, entries) in [
            ("allow", &cfg.network_guard.allow),
            ("deny", &cfg.network_guard.deny),
        ] {
            for (i, e) in entries.iter().enumerate() {
                if let Err(m) = parse_guard_entry(e) {
                    self.err(format!("network_guard.{list}[{i}]"), m);
                }
            }
        }
    }

    fn limits(&mut self, cfg: &Config) {
        if cfg.connect.allowed_ports.is_empty() {
            self.err(
                "connect.allowed_ports",
                "must list at least one port (443 is the usual one)",
            );
        }
        for (i, p) in cfg.connect.allowed_ports.iter().enumerate() {
            if *p == 0 {
                self.err(
                    format!("connect.allowed_ports[{i}]"),
                    "port 0 is not a valid CONNECT port",
                );
            }
        }
        if cfg.server.max_headers == 0 {
            self.err("server.max_headers", "must be at least 1");
        }
        if cfg.server.max_connections == 0 {
            self.err("server.max_connections", "must be at least 1");
        }
        if cfg.logging.access_log.trim().is_empty() {
            self.err(
                "logging.access_log",
                "must be stdout, stderr, off or a file path",
            );
        }
    }

    fn apis(&mut self, apis: &[Api]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut routes: HashMap<&str, usize> = HashMap::new();
        for (i, api) in apis.iter().enumerate() {
            let at = format!("apis[{i}]");
            if let Some(m) = name_problem(&api.name) {
                self.err(format!("{at}.name"), m);
            } else if let Some(first) = names.insert(&api.name, i) {
                self.err(
                    format!("{at}.name"),
                    format!("API name {:?} is already used by apis[{first}]", api.name),
                );
            }
            for (j, h) in api.hosts.iter().enumerate() {
                if let Some(m) = host_problem(h) {
                    self.err(format!("{at}.hosts[{j}]"), m);
                }
            }
            if let Some(u) = &api.upstream
                && let Some(m) = upstream_problem(u)
            {
                self.err(format!("{at}.upstream"), m);
            }
            self.api_limits(&at, api);
            let Some(route) = &api.route else { continue };
            if let Some(m) = route_problem(route) {
                self.err(format!("{at}.route"), m);
            } else if let Some(first) = routes.insert(route, i) {
                self.err(
                    format!("{at}.route"),
                    format!("route {route:?} is already used by apis[{first}]"),
                );
            }
            if api.upstream.is_none() && !api.hosts.iter().any(|h| !h.starts_with('*')) {
                self.err(
                    format!("{at}.route"),
                    "an API with a route needs `upstream` or at least one non-wildcard host to forward to",
                );
            }
        }
    }

    /// `apis[i].limits`: unique well-formed names, `requests` ≥ 1, a positive `per` (for fixed
    /// windows one of the clock-aligned lengths), `burst` only for GCRA.
    fn api_limits(&mut self, at: &str, api: &Api) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (j, l) in api.limits.iter().enumerate() {
            let at = format!("{at}.limits[{j}]");
            if let Some(m) = name_problem(&l.name) {
                self.err(format!("{at}.name"), m);
            } else if let Some(first) = names.insert(&l.name, j) {
                self.err(
                    format!("{at}.name"),
                    format!("limit name {:?} is already used by limits[{first}]", l.name),
                );
            }
            if l.requests == 0 {
                self.err(format!("{at}.requests"), "must be at least 1");
            }
            let per_ms = l.per.get().as_millis();
            if per_ms == 0 {
                self.err(format!("{at}.per"), "must be longer than 0");
            } else if l.algorithm == LimitAlgorithm::Fixed
                && !matches!(per_ms, 1_000 | 60_000 | 3_600_000 | 86_400_000)
            {
                self.err(
                    format!("{at}.per"),
                    format!(
                        "a fixed window must be exactly 1s, 1m, 1h or 1d (got {}); use `algorithm: sliding` or `gcra` for other lengths",
                        l.per
                    ),
                );
            }
            match (l.algorithm, l.burst) {
                (LimitAlgorithm::Gcra, Some(0)) => {
                    self.err(format!("{at}.burst"), "must be at least 1");
                }
                (LimitAlgorithm::Gcra, _) | (_, None) => {}
                (_, Some(_)) => {
                    self.err(format!("{at}.burst"), "only applies to `algorithm: gcra`");
                }
            }
        }
    }

    fn consumers(&mut self, consumers: &[Consumer], apis: &[Api]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut headers: HashMap<(String, &str), usize> = HashMap::new();
        for (i, c) in consumers.iter().enumerate() {
            let at = format!("consumers[{i}]");
            if let Some(m) = name_problem(&c.name) {
                self.err(format!("{at}.name"), m);
            } else if c.name == ANONYMOUS_CONSUMER {
                self.err(
                    format!("{at}.name"),
                    "the name `anonymous` is reserved for unknown callers",
                );
            } else if let Some(first) = names.insert(&c.name, i) {
                self.err(
                    format!("{at}.name"),
                    format!(
                        "consumer name {:?} is already used by consumers[{first}]",
                        c.name
                    ),
                );
            }
            for (j, name) in c.apis.iter().flatten().enumerate() {
                if !apis.iter().any(|a| &a.name == name) {
                    self.err(
                        format!("{at}.apis[{j}]"),
                        format!("no API is named {name:?}"),
                    );
                }
            }
            let id = format!("{at}.identify");
            match &c.identify {
                Identify::Header(h) => {
                    if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                        self.err(
                            format!("{id}.header.name"),
                            format!("{:?} is not a valid header name", h.name),
                        );
                    }
                    if h.value.is_empty() {
                        self.err(format!("{id}.header.value"), "must not be empty");
                    }
                    if let Some(first) = headers.insert((h.name.to_ascii_lowercase(), &h.value), i)
                    {
                        self.err(
                            id.as_str(),
                            format!(
                                "consumers[{first}] is identified by the same header and value"
                            ),
                        );
                    }
                }
                Identify::ApiKey(k) => {
                    if let Some(name) = &k.header
                        && http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    {
                        self.err(
                            format!("{id}.api_key.header"),
                            format!("{name:?} is not a valid header name"),
                        );
                    }
                }
                Identify::Source(list) => {
                    if list.is_empty() {
                        self.err(
                            format!("{id}.source"),
                            "must list at least one address or CIDR",
                        );
                    }
                    for (j, s) in list.iter().enumerate() {
                        if s.parse::<IpNet>().is_err() && s.parse::<IpAddr>().is_err() {
                            self.err(
                                format!("{id}.source[{j}]"),
                                format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Some(format!(
            "{name:?} may contain only letters, digits, `_`, `.` and `-`"
        ));
    }
    None
}

fn host_problem(h: &str) -> Option<String> {
    if h.is_empty() {
        return Some("host must not be empty".to_owned());
    }
    if h.contains("://") {
        return Some(format!("{h:?}: write the host name only, without a scheme"));
    }
    if h.contains(['/', '?', '#']) {
        return Some(format!("{h:?}: write the host name only, without a path"));
    }
    let bracketed_v6 = h.starts_with('[') && h.ends_with(']');
    if h.contains(':') && !bracketed_v6 {
        return Some(format!("{h:?}: write the host name only, without a port"));
    }
    if h.contains(|c: char| c.is_whitespace() || c == '@') {
        return Some(format!("{h:?} is not a host name"));
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    if rest.contains('*') || rest.is_empty() {
        return Some(format!(
            "{h:?}: `*` is allowed only as a whole leading label, as in `*.example.com`"
        ));
    }
    None
}

fn route_problem(r: &str) -> Option<String> {
    if !r.starts_with('/') {
        return Some(format!("route {r:?} must start with `/`"));
    }
    if r.ends_with('/') {
        return Some(format!("route {r:?} must not end with `/`"));
    }
    if r.contains("//")
        || r.contains(|c: char| c.is_whitespace() || matches!(c, '?' | '#' | '*' | '{' | '}'))
    {
        return Some(format!(
            "route {r:?} must be a plain path prefix such as `/github`"
        ));
    }
    if r == "/admin" || r.starts_with("/admin/") {
        return Some(format!(
            "route {r:?} is reserved: /admin belongs to Tollgate"
        ));
    }
    None
}

fn upstream_problem(u: &str) -> Option<String> {
    const HINT: &str = "expected an absolute http or https URL such as https://api.example.com";
    if u.contains(['?', '#']) {
        return Some(format!("upstream {u:?} must not have a query or fragment"));
    }
    let Ok(uri) = u.parse::<http::Uri>() else {
        return Some(format!("upstream {u:?} is not a valid URL: {HINT}"));
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Some(format!("upstream {u:?}: {HINT}"));
    }
    let Some(auth) = uri.authority() else {
        return Some(format!("upstream {u:?} has no host: {HINT}"));
    };
    if auth.as_str().contains('@') {
        return Some(format!(
            "upstream {u:?} must not carry credentials; use a secret reference instead"
        ));
    }
    if auth.host().is_empty() {
        return Some(format!("upstream {u:?} has no host: {HINT}"));
    }
    None
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

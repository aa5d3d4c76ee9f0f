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
use crate::model::{Api, Config, Consumer, Identify, Limit, LimitAlgorithm, LimitCost, LimitScope};
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
    v.state(cfg);
    v.traffic(cfg);
    v.tls_intercept(cfg);
    v.discovery(&cfg.discovery);
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
        if let Some(t) = &cfg.listen.proxy_tls {
            if t.addr.port() != 0 && (t.addr == proxy || t.addr == admin) {
                self.err(
                    "listen.proxy_tls.addr",
                    format!("{} is already used by another listener", t.addr),
                );
            }
            if t.client_auth != crate::model::ClientCertAuth::None && t.client_ca.is_none() {
                self.err(
                    "listen.proxy_tls.client_ca",
                    "required when client_auth is optional or required",
                );
            }
            if t.client_auth == crate::model::ClientCertAuth::None
                && (t.client_ca.is_some() || !t.crls.is_empty())
            {
                self.err(
                    "listen.proxy_tls.client_auth",
                    "client_ca and crls need client_auth: optional or required",
                );
            }
            self.sni_certificates(t);
        }
    }

    /// `listen.proxy_tls`: `cert` and `key` go together; without them `certificates` is
    /// needed; each SNI host is a DNS name or `*.` + one, and appears once.
    fn sni_certificates(&mut self, t: &crate::model::ProxyTls) {
        if t.cert.is_some() != t.key.is_some() {
            self.err(
                "listen.proxy_tls.cert",
                "`cert` and `key` go together (the default certificate and its key)",
            );
        }
        if t.cert.is_none() && t.certificates.is_empty() {
            self.err(
                "listen.proxy_tls",
                "needs a default `cert`/`key` or at least one entry in `certificates`",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in t.certificates.iter().enumerate() {
            if c.hosts.is_empty() {
                self.err(
                    format!("listen.proxy_tls.certificates[{i}].hosts"),
                    "must not be empty",
                );
            }
            for (j, h) in c.hosts.iter().enumerate() {
                let key = format!("listen.proxy_tls.certificates[{i}].hosts[{j}]");
                let name = h.trim_end_matches('.').to_ascii_lowercase();
                let bare = name.strip_prefix("*.").unwrap_or(&name);
                let ok = !bare.is_empty()
                    && bare.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    self.err(
                        key,
                        format!("`{h}` is not a host name or `*.` wildcard of one"),
                    );
                } else if !seen.insert(name) {
                    self.err(
                        key,
                        format!("`{h}` appears more than once in `certificates`"),
                    );
                }
            }
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

    /// `apis[i].tls: intercept` needs the `tls_intercept` CA; `leaf_ttl` between 1h and 397
    /// days (the longest validity browsers accept) and a cache of at least one leaf.
    fn tls_intercept(&mut self, cfg: &Config) {
        if cfg.tls_intercept.is_none() {
            for (i, api) in cfg.apis.iter().enumerate() {
                if api.tls == crate::model::TlsMode::Intercept {
                    self.err(
                        format!("apis[{i}].tls"),
                        "`tls: intercept` needs a top-level `tls_intercept` section with the CA (see `tollgate ca init`)",
                    );
                }
            }
        }
        let Some(t) = &cfg.tls_intercept else { return };
        let ttl = t.leaf_ttl.get();
        if ttl < std::time::Duration::from_secs(3600)
            || ttl > std::time::Duration::from_secs(397 * 24 * 3600)
        {
            self.err("tls_intercept.leaf_ttl", "must be between 1h and 397 days");
        }
        if t.leaf_cache == 0 {
            self.err("tls_intercept.leaf_cache", "must be at least 1");
        }
        if t.ca_cert.trim().is_empty() {
            self.err("tls_intercept.ca_cert", "must name the CA certificate file");
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
            for (k, m) in crate::resilience::problems(
                api.retry.as_ref(),
                api.breaker.as_ref(),
                &api.provider_backoff,
            ) {
                self.err(format!("{at}.{k}"), m);
            }
            if let Some(c) = &api.cors {
                for (k, m) in crate::cors::problems(c) {
                    self.err(format!("{at}.cors.{k}"), m);
                }
                if api.route.is_none() {
                    self.err(format!("{at}.cors"), "CORS applies to a `route`; add one");
                }
            }
            if let Some(g) = &api.upstream_group {
                for (k, m) in crate::upstreams::problems(g) {
                    self.err(format!("{at}.upstream_group.{k}"), m);
                }
                if api.upstream.is_some() {
                    self.err(
                        format!("{at}.upstream_group"),
                        "set either `upstream` or `upstream_group`, not both",
                    );
                }
                if api.route.is_none() {
                    self.err(
                        format!("{at}.upstream_group"),
                        "an upstream group serves a `route`; add one",
                    );
                }
            }
            let Some(route) = &api.route else { continue };
            if let Some(m) = route_problem(route) {
                self.err(format!("{at}.route"), m);
            } else if let Some(first) = routes.insert(route, i) {
                self.err(
                    format!("{at}.route"),
                    format!("route {route:?} is already used by apis[{first}]"),
                );
            }
            if api.upstream.is_none()
                && api.upstream_group.is_none()
                && !api.hosts.iter().any(|h| !h.starts_with('*'))
            {
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
            self.limit_window_and_cost(&at, l);
            let per_ms = l.per.get().as_millis();
            if l.per.is_month() {
                // Checked by limit_window_and_cost.
            } else if per_ms == 0 {
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

    /// `cost`: exactly one source (`header`, `response_bytes`, `response_json`), and the
    /// response-cost settings only with a response source.
    fn limit_cost(&mut self, at: &str, c: &LimitCost) {
        let sources = usize::from(c.header.is_some())
            + usize::from(c.response_bytes)
            + usize::from(c.response_json.is_some());
        if sources != 1 {
            self.err(
                format!("{at}.cost"),
                "set exactly one of `header`, `response_bytes: true` or `response_json`",
            );
        }
        if let Some(h) = &c.header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            self.err(format!("{at}.cost.header"), "not a valid header name");
        }
        if let Some(p) = &c.response_json
            && (p.is_empty() || p.split('.').any(str::is_empty))
        {
            self.err(
                format!("{at}.cost.response_json"),
                "a dotted path of field names such as `usage.total_tokens`",
            );
        }
        if c.default.is_some() && c.response_json.is_none() {
            self.err(
                format!("{at}.cost.default"),
                "only applies to `response_json`",
            );
        }
        match c.reserve {
            Some(_) if c.header.is_some() => {
                self.err(
                    format!("{at}.cost.reserve"),
                    "only applies to `response_bytes` and `response_json`",
                );
            }
            Some(0) => self.err(format!("{at}.cost.reserve"), "must be at least 1"),
            _ => {}
        }
    }

    /// `per: month` with its `time_zone` and `renewal_day`, and `cost`.
    fn limit_window_and_cost(&mut self, at: &str, l: &Limit) {
        if l.per.is_month() && l.algorithm != LimitAlgorithm::Fixed {
            self.err(
                format!("{at}.per"),
                "`per: month` is a calendar window: it needs `algorithm: fixed`",
            );
        }
        if let Some(tz) = &l.time_zone {
            let day = !l.per.is_month() && l.per.get().as_millis() == 86_400_000;
            if !(l.per.is_month() || day && l.algorithm == LimitAlgorithm::Fixed) {
                self.err(
                    format!("{at}.time_zone"),
                    "only applies to calendar windows: `per: 1d` (algorithm fixed) or `per: month`",
                );
            } else if let Err(m) = crate::traffic::parse_time_zone(tz) {
                self.err(format!("{at}.time_zone"), m);
            }
        }
        if let Some(d) = l.renewal_day {
            if !l.per.is_month() {
                self.err(format!("{at}.renewal_day"), "only applies to `per: month`");
            } else if !(1..=31).contains(&d) {
                self.err(format!("{at}.renewal_day"), "must be between 1 and 31");
            }
        }
        if let Some(c) = &l.cost {
            self.limit_cost(at, c);
        }
    }

    fn redis_nodes(&mut self, path: &str, list: &[String]) {
        if list.is_empty() {
            self.err(path, "needs at least one host:port");
        }
        for (i, a) in list.iter().enumerate() {
            let ok = a.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.contains(['/', '@']) && p.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                self.err(format!("{path}[{i}]"), format!("{a:?} is not host:port"));
            }
        }
    }

    /// `state.redis`: exactly one topology, addresses as `host:port`, a client key with its
    /// certificate. (URLs and files are checked when the gateway is built: they may be secrets.)
    fn redis_topology(&mut self, r: &crate::RedisState) {
        let n = [r.url.is_some(), r.sentinel.is_some(), r.cluster.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if n != 1 {
            self.err(
                "state.redis",
                "set exactly one of `url` (one server, redis:// or rediss://), `sentinel` or `cluster`",
            );
        }
        if let Some(s) = &r.sentinel {
            self.redis_nodes("state.redis.sentinel.nodes", &s.nodes);
            if s.master.trim().is_empty() {
                self.err(
                    "state.redis.sentinel.master",
                    "must name the monitored master",
                );
            }
        }
        if let Some(c) = &r.cluster {
            self.redis_nodes("state.redis.cluster.nodes", &c.nodes);
        }
        if let Some(t) = &r.tls
            && t.cert_file.is_some() != t.key_file.is_some()
        {
            self.err(
                "state.redis.tls",
                "`cert_file` and `key_file` go together (a client certificate and its key)",
            );
        }
    }

    /// `state`: a `scope: global` limit needs `state.redis`; the Redis settings are sane.
    fn state(&mut self, cfg: &Config) {
        for (i, api) in cfg.apis.iter().enumerate() {
            for (j, l) in api.limits.iter().enumerate() {
                if l.scope == LimitScope::Global && cfg.state.redis.is_none() {
                    self.err(
                        format!("apis[{i}].limits[{j}].scope"),
                        "`scope: global` needs `state.redis` (the shared counter store)",
                    );
                }
            }
        }
        if let Some(r) = &cfg.state.redis {
            if r.timeout.get().is_zero() {
                self.err("state.redis.timeout", "must be longer than 0");
            }
            if r.prefix.is_empty() || r.prefix.contains(['{', '}', ' ']) {
                self.err(
                    "state.redis.prefix",
                    "must be non-empty, without braces or spaces (it becomes part of a hash tag)",
                );
            }
            self.redis_topology(r);
        }
        if cfg.state.dir.as_deref().is_some_and(str::is_empty) {
            self.err("state.dir", "must not be empty");
        }
    }

    /// Discovery bounds: at least one, and small enough that the table stays a few megabytes.
    fn discovery(&mut self, d: &crate::Discovery) {
        for (key, n) in [
            ("discovery.max_hosts", d.max_hosts),
            ("discovery.max_endpoints_per_host", d.max_endpoints_per_host),
        ] {
            if !(1..=MAX_DISCOVERY_BOUND).contains(&n) {
                self.err(key, format!("must be between 1 and {MAX_DISCOVERY_BOUND}"));
            }
        }
    }

    /// Limits' `shares`, `borrow`, `default_share` and `on_limit`, and APIs' `concurrency`
    /// (rules in [`crate::traffic`]).
    fn traffic(&mut self, cfg: &Config) {
        let mut consumers: Vec<&str> = cfg.consumers.iter().map(|c| c.name.as_str()).collect();
        if cfg.unknown_consumer.action == crate::UnknownConsumerAction::Anonymous {
            consumers.push(ANONYMOUS_CONSUMER);
        }
        for (i, api) in cfg.apis.iter().enumerate() {
            for (j, l) in api.limits.iter().enumerate() {
                for (k, m) in crate::traffic::limit_problems(l, &consumers) {
                    self.err(format!("apis[{i}].limits[{j}].{k}"), m);
                }
            }
            if let Some(c) = &api.concurrency {
                for (k, m) in crate::traffic::concurrency_problems(c) {
                    self.err(format!("apis[{i}].{k}"), m);
                }
            }
            self.dlp(
                &format!("apis[{i}]"),
                api.dlp.as_ref(),
                api.body_limits.as_ref(),
            );
            if let Some(c) = &api.cache {
                for (k, m) in crate::cache::problems(c) {
                    self.err(format!("apis[{i}].cache.{k}"), m);
                }
            }
        }
        for (k, m) in crate::cache::global_problems(&cfg.cache) {
            self.err(format!("cache.{k}"), m);
        }
        for (k, m) in crate::telemetry::problems(&cfg.telemetry) {
            self.err(format!("telemetry.{k}"), m);
        }
        for (i, c) in cfg.consumers.iter().enumerate() {
            self.dlp(
                &format!("consumers[{i}]"),
                c.dlp.as_ref(),
                c.body_limits.as_ref(),
            );
        }
    }

    /// `dlp` and `body_limits` of an API or consumer (rules in [`crate::dlp`]).
    fn dlp(
        &mut self,
        at: &str,
        dlp: Option<&crate::dlp::Dlp>,
        limits: Option<&crate::dlp::BodyLimits>,
    ) {
        let problems = dlp
            .map(crate::dlp::problems)
            .into_iter()
            .chain(limits.map(crate::dlp::limit_problems))
            .flatten();
        for (k, m) in problems {
            self.err(format!("{at}.{k}"), m);
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
                // Checked where the policy compiles (tollgate-policy stage/jwt.rs).
                Identify::Jwt(_) => {}
                Identify::ClientCert(c) => {
                    let set = [&c.subject_cn, &c.dns, &c.uri]
                        .iter()
                        .filter(|f| f.is_some())
                        .count();
                    if set != 1 {
                        self.err(
                            format!("{id}.client_cert"),
                            "set exactly one of subject_cn, dns, uri",
                        );
                    }
                    if [&c.subject_cn, &c.dns, &c.uri]
                        .iter()
                        .any(|f| f.as_ref().is_some_and(|v| v.is_empty()))
                    {
                        self.err(format!("{id}.client_cert"), "must not be empty");
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

/// Largest `discovery.max_hosts` / `max_endpoints_per_host` (each endpoint is a few hundred bytes).
const MAX_DISCOVERY_BOUND: usize = 10_000;

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

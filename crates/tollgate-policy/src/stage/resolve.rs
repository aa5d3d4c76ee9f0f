//! Resolve stage: where the request goes and which API governs it.
//!
//! Forward and CONNECT traffic is matched by host: an exact host first, then
//! `*.suffix` wildcards with the longest suffix winning (`*.example.com`
//! matches `a.example.com` and `a.b.example.com`, never `example.com`). The
//! target is the requested scheme, host, port and normalised path.
//!
//! Route traffic (`http://gateway/<route>/rest`) is matched by the longest
//! route prefix at a segment boundary (`/github` matches `/github` and
//! `/github/x`, not `/githubx`). The target is the API's `upstream` (or
//! `https://<first exact host>`) with its base path, followed by the rest of
//! the path and the query. Allow rules see the path *as the upstream API
//! defines it*: after the route prefix is removed and before the upstream's
//! base path is added, so `/github/repos/x` with upstream
//! `https://ghe.example.com/api/v3` is checked as `/repos/x`, the same path a
//! forward-proxy client would use against `api.github.com`.
//!
//! Paths are normalised first (see [`crate::pattern::normalize_path`]); the
//! normalised path is what is forwarded.
//!
//! Refusals: `bad_request` (400) for a host that is not a valid name or
//! address, or a path that does not start with `/`; `route_not_found` (404)
//! when no route prefix matches. Neither is subject to report mode: without
//! a target there is nothing to forward.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tollgate_config::Config;

use crate::error::{ErrorCode, GatewayError};
use crate::host::{HostPattern, normalize_host};
use crate::pattern::normalize_path;
use crate::pipeline::PathError;
use crate::request::{RequestInfo, Scheme, Target, TrafficKind};

#[derive(Debug)]
struct Route {
    /// Without trailing slash; empty for the catch-all route `/`.
    prefix: Box<str>,
    api: usize,
    scheme: Scheme,
    host: Arc<str>,
    port: u16,
    /// Upstream base path without trailing slash (empty for `/`).
    base: Box<str>,
}

/// The compiled resolve stage.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    exact: HashMap<Box<str>, usize>,
    /// Keyed by `.example.com` for `*.example.com`.
    suffix: HashMap<Box<str>, usize>,
    /// Longest prefix first.
    routes: Vec<Route>,
}

/// How the API was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched {
    Exact,
    /// Wildcard; the suffix starts at this byte offset of the target host.
    Wildcard(usize),
    Route,
    None,
}

/// The stage's result for one request.
#[derive(Debug)]
pub(crate) struct Resolved<'a> {
    pub(crate) api: Option<usize>,
    pub(crate) matched: Matched,
    pub(crate) target: Target,
    /// The normalised request path.
    path: Cow<'a, str>,
    /// Where, in `path`, the part allow rules see begins (after a route prefix).
    rest: usize,
}

impl Resolved<'_> {
    /// The path allow rules are matched against (empty for CONNECT).
    pub(crate) fn match_path(&self) -> &str {
        match self.path.get(self.rest..) {
            Some("") if !self.path.is_empty() => "/",
            Some(p) => p,
            None => "/",
        }
    }

    /// One trace line (no query string: it may carry credentials).
    pub(crate) fn describe(&self, api_name: Option<&str>) -> String {
        let t = &self.target;
        let api = api_name.unwrap_or("?");
        match self.matched {
            Matched::Exact => format!("host {} matched API {api:?} (exact)", t.host),
            Matched::Wildcard(at) => {
                format!(
                    "host {} matched API {api:?} (wildcard *{})",
                    t.host,
                    t.host.get(at..).unwrap_or("")
                )
            }
            Matched::None => format!("host {} matches no API", t.host),
            Matched::Route => {
                let path = t.path_and_query.split('?').next().unwrap_or("");
                let host = if t.host.contains(':') {
                    format!("[{}]", t.host)
                } else {
                    t.host.to_string()
                };
                format!(
                    "route prefix matched API {api:?}; allow rules see {}; forwarding to {}://{host}:{}{path}",
                    self.match_path(),
                    t.scheme.as_str(),
                    t.port
                )
            }
        }
    }
}

fn bad_request(detail: &'static str) -> GatewayError {
    GatewayError::new(ErrorCode::BadRequest, detail)
}

impl Resolver {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut out = Self::default();
        for (i, api) in cfg.apis.iter().enumerate() {
            if api.hosts.is_empty() && api.route.is_none() {
                errs.push(PathError {
                    path: format!("apis[{i}]"),
                    message: "an API needs `hosts` or a `route`".to_owned(),
                });
            }
            let mut first_exact: Option<String> = None;
            for (j, h) in api.hosts.iter().enumerate() {
                let path = format!("apis[{i}].hosts[{j}]");
                let (map, key) = match HostPattern::parse(h) {
                    Ok(HostPattern::Exact(host)) => {
                        first_exact.get_or_insert_with(|| host.clone());
                        (&mut out.exact, host)
                    }
                    Ok(HostPattern::Suffix(suffix)) => (&mut out.suffix, suffix),
                    Err(message) => {
                        errs.push(PathError { path, message });
                        continue;
                    }
                };
                if let Some(prev) = map.insert(key.into_boxed_str(), i) {
                    let message = format!("{h:?} is already listed by apis[{prev}]");
                    errs.push(PathError { path, message });
                }
            }
            // An upstream group's route starts at its first target; the proxy picks the
            // target of each attempt (tollgate-proxy `balance.rs`).
            let group_url = api
                .upstream_group
                .as_ref()
                .and_then(|g| g.targets.first())
                .map(|t| t.url.as_str());
            let upstream = api.upstream.as_deref().or(group_url).map(|u| {
                parse_upstream(u).map_err(|message| {
                    errs.push(PathError {
                        path: format!("apis[{i}].upstream"),
                        message,
                    })
                })
            });
            let Some(route) = &api.route else { continue };
            let path = format!("apis[{i}].route");
            let prefix = match parse_route(route) {
                Ok(p) => p,
                Err(message) => {
                    errs.push(PathError { path, message });
                    continue;
                }
            };
            let (scheme, host, port, base) = match (upstream, first_exact) {
                (Some(Ok(u)), _) => u,
                (Some(Err(())), _) => continue,
                (None, Some(host)) => (Scheme::Https, Arc::from(host), 443, Box::from("")),
                (None, None) => {
                    errs.push(PathError {
                        path,
                        message: "a route needs `upstream`, or a host that is not a wildcard"
                            .to_owned(),
                    });
                    continue;
                }
            };
            if let Some(prev) = out.routes.iter().find(|r| r.prefix == prefix) {
                errs.push(PathError {
                    path,
                    message: format!("route {route:?} is already used by apis[{}]", prev.api),
                });
                continue;
            }
            out.routes.push(Route {
                prefix,
                api: i,
                scheme,
                host,
                port,
                base,
            });
        }
        out.routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        out
    }

    pub(crate) fn resolve<'a>(&self, req: &RequestInfo<'a>) -> Result<Resolved<'a>, GatewayError> {
        if req.kind == TrafficKind::Route {
            return self.resolve_route(req);
        }
        let host = normalize_host(req.host)
            .ok_or_else(|| bad_request("the target host is not a valid host name"))?;
        let (api, matched) = match self.exact.get(&*host) {
            Some(&api) => (Some(api), Matched::Exact),
            None => self.match_suffix(&host),
        };
        let (path, path_and_query) = if req.kind == TrafficKind::Connect {
            (Cow::Borrowed(""), String::new())
        } else {
            let path = if req.path.is_empty() {
                Cow::Borrowed("/")
            } else {
                normalize_path(req.path)
                    .ok_or_else(|| bad_request("the request path must start with '/'"))?
            };
            let pq = with_query(&path, "", req.query);
            (path, pq)
        };
        let target = Target {
            scheme: req.scheme,
            host: Arc::from(&*host),
            port: req.port,
            path_and_query,
        };
        Ok(Resolved {
            api,
            matched,
            target,
            path,
            rest: 0,
        })
    }

    /// Longest `*.suffix` first: try the host's suffixes from the left.
    fn match_suffix(&self, host: &str) -> (Option<usize>, Matched) {
        if !self.suffix.is_empty() {
            for (at, _) in host.match_indices('.') {
                if let Some(&api) = self.suffix.get(&host[at..]) {
                    return (Some(api), Matched::Wildcard(at));
                }
            }
        }
        (None, Matched::None)
    }

    fn resolve_route<'a>(&self, req: &RequestInfo<'a>) -> Result<Resolved<'a>, GatewayError> {
        let path = normalize_path(req.path)
            .ok_or_else(|| bad_request("the request path must start with '/'"))?;
        let route = self
            .routes
            .iter()
            .find(|r| {
                path.starts_with(&*r.prefix)
                    && matches!(path.as_bytes().get(r.prefix.len()), None | Some(b'/'))
            })
            .ok_or_else(|| {
                GatewayError::new(ErrorCode::RouteNotFound, "no route matches this path")
            })?;
        let rest_at = route.prefix.len();
        let rest = path.get(rest_at..).unwrap_or("");
        let path_and_query = if rest.is_empty() {
            with_query(
                if route.base.is_empty() {
                    "/"
                } else {
                    &route.base
                },
                "",
                req.query,
            )
        } else {
            with_query(&route.base, rest, req.query)
        };
        let target = Target {
            scheme: route.scheme,
            host: route.host.clone(),
            port: route.port,
            path_and_query,
        };
        Ok(Resolved {
            api: Some(route.api),
            matched: Matched::Route,
            target,
            path,
            rest: rest_at,
        })
    }
}

fn with_query(a: &str, b: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(a.len() + b.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(a);
    out.push_str(b);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn parse_route(route: &str) -> Result<Box<str>, String> {
    if !route.starts_with('/') {
        return Err(format!("route {route:?} must start with '/'"));
    }
    if route.contains(['*', '{', '}', '?', '#']) {
        return Err(format!(
            "route {route:?} is a literal path prefix; patterns belong in `allow`"
        ));
    }
    if normalize_path(route).as_deref() != Some(route) {
        return Err(format!(
            "route {route:?} must not contain empty, '.' or '..' segments"
        ));
    }
    Ok(route.strip_suffix('/').unwrap_or(route).into())
}

/// Parses an upstream base URL. Errors never echo the URL: it might carry
/// credentials in its user-info part.
fn parse_upstream(url: &str) -> Result<(Scheme, Arc<str>, u16, Box<str>), String> {
    let uri: http::Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err("must start with https:// or http://".to_owned()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "must name a host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("must not contain user:password@; use credential injection instead".to_owned());
    }
    let host = normalize_host(authority.host())
        .ok_or_else(|| "the host is not a valid host name".to_owned())?;
    if uri.query().is_some() {
        return Err("must not have a query string".to_owned());
    }
    let path = uri.path();
    let base = match path {
        "" | "/" => "",
        p if normalize_path(p).as_deref() == Some(p) => p.strip_suffix('/').unwrap_or(p),
        _ => return Err("the base path must not contain empty, '.' or '..' segments".to_owned()),
    };
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    Ok((scheme, Arc::from(host.as_ref()), port, base.into()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::{Req, compile_errors, config};

    fn resolver() -> Resolver {
        let cfg = config(json!({ "apis": [
            { "name": "github", "hosts": ["api.github.com"], "route": "/github", "upstream": "https://ghe.example.com:8443/api/v3/" },
            { "name": "ex-wild", "hosts": ["*.example.com"] },
            { "name": "ex-deep", "hosts": ["*.deep.example.com"] },
            { "name": "books", "hosts": ["bücher.example"] },
            { "name": "v6", "hosts": ["[2001:db8::1]"] },
            { "name": "raw", "hosts": ["*.githubusercontent.com", "raw.githubusercontent.com"], "route": "/gh" },
            { "name": "enterprise", "route": "/github/enterprise", "upstream": "http://10.0.0.5" }
        ]}));
        let mut errs = Vec::new();
        let r = Resolver::compile(&cfg, &mut errs);
        assert_eq!(errs, []);
        r
    }

    #[test]
    fn matches_hosts() {
        let r = resolver();
        let fwd = Req::forward;
        // (request, api, how, target host, port, path and query)
        type Case = (Req, Option<usize>, Matched, &'static str, u16, &'static str);
        let cases: Vec<Case> = vec![
            (
                fwd("http://api.github.com/repos/x?q=1"),
                Some(0),
                Matched::Exact,
                "api.github.com",
                80,
                "/repos/x?q=1",
            ),
            (
                fwd("https://API.GitHub.com./"),
                Some(0),
                Matched::Exact,
                "api.github.com",
                443,
                "/",
            ),
            (
                fwd("http://a.example.com:8080/"),
                Some(1),
                Matched::Wildcard(1),
                "a.example.com",
                8080,
                "/",
            ),
            (
                fwd("http://a.b.example.com/"),
                Some(1),
                Matched::Wildcard(3),
                "a.b.example.com",
                80,
                "/",
            ),
            (
                fwd("http://deep.example.com/"),
                Some(1),
                Matched::Wildcard(4),
                "deep.example.com",
                80,
                "/",
            ),
            (
                fwd("http://x.deep.example.com/"),
                Some(2),
                Matched::Wildcard(1),
                "x.deep.example.com",
                80,
                "/",
            ),
            (
                fwd("http://example.com/"),
                None,
                Matched::None,
                "example.com",
                80,
                "/",
            ),
            (
                fwd("http://notexample.com/"),
                None,
                Matched::None,
                "notexample.com",
                80,
                "/",
            ),
            (
                fwd("http://raw.githubusercontent.com/"),
                Some(5),
                Matched::Exact,
                "raw.githubusercontent.com",
                80,
                "/",
            ),
            (
                fwd("http://x/").host("BÜCHER.example."),
                Some(3),
                Matched::Exact,
                "xn--bcher-kva.example",
                80,
                "/",
            ),
            (
                fwd("http://xn--bcher-kva.example/"),
                Some(3),
                Matched::Exact,
                "xn--bcher-kva.example",
                80,
                "/",
            ),
            (
                fwd("http://[2001:db8:0::1]:8443/a"),
                Some(4),
                Matched::Exact,
                "2001:db8::1",
                8443,
                "/a",
            ),
            (
                fwd("http://x/").host("2001:DB8::1"),
                Some(4),
                Matched::Exact,
                "2001:db8::1",
                80,
                "/",
            ),
            (
                fwd("http://api.github.com/x").path("/repos/../admin//x"),
                Some(0),
                Matched::Exact,
                "api.github.com",
                80,
                "/admin/x",
            ),
            (
                fwd("http://api.github.com/x").path(""),
                Some(0),
                Matched::Exact,
                "api.github.com",
                80,
                "/",
            ),
            (
                Req::connect("API.github.com", 443),
                Some(0),
                Matched::Exact,
                "api.github.com",
                443,
                "",
            ),
            (
                Req::connect("a.example.com", 8443),
                Some(1),
                Matched::Wildcard(1),
                "a.example.com",
                8443,
                "",
            ),
        ];
        for (req, api, matched, host, port, pq) in cases {
            let got = r.resolve(&req.info()).unwrap();
            assert_eq!((got.api, got.matched), (api, matched), "{req:?}");
            assert_eq!(
                (
                    &*got.target.host,
                    got.target.port,
                    got.target.path_and_query.as_str()
                ),
                (host, port, pq),
                "{req:?}"
            );
        }
        for bad in ["exa mple.com", "", "a..b", "evil.com/x", "[::1"] {
            let err = r
                .resolve(&Req::forward("http://x/").host(bad).info())
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad:?}");
        }
        let err = r
            .resolve(&Req::forward("http://x/").path("relative").info())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn matches_routes() {
        let r = resolver();
        // (path, Ok((api, scheme, host, port, path and query, path allow rules see)))
        type Want = Result<
            (
                usize,
                &'static str,
                &'static str,
                u16,
                &'static str,
                &'static str,
            ),
            ErrorCode,
        >;
        let cases: Vec<(&str, Want)> = vec![
            (
                "/github/repos/x?per_page=1",
                Ok((
                    0,
                    "https",
                    "ghe.example.com",
                    8443,
                    "/api/v3/repos/x?per_page=1",
                    "/repos/x",
                )),
            ),
            (
                "/github",
                Ok((0, "https", "ghe.example.com", 8443, "/api/v3", "/")),
            ),
            (
                "/github/",
                Ok((0, "https", "ghe.example.com", 8443, "/api/v3/", "/")),
            ),
            (
                "/github//repos/./x/",
                Ok((
                    0,
                    "https",
                    "ghe.example.com",
                    8443,
                    "/api/v3/repos/x/",
                    "/repos/x/",
                )),
            ),
            ("/githubx", Err(ErrorCode::RouteNotFound)),
            (
                "/github/enterprise/x",
                Ok((6, "http", "10.0.0.5", 80, "/x", "/x")),
            ),
            (
                "/github/enterprisey",
                Ok((
                    0,
                    "https",
                    "ghe.example.com",
                    8443,
                    "/api/v3/enterprisey",
                    "/enterprisey",
                )),
            ),
            (
                "/gh/a/b?x=%2F",
                Ok((
                    5,
                    "https",
                    "raw.githubusercontent.com",
                    443,
                    "/a/b?x=%2F",
                    "/a/b",
                )),
            ),
            (
                "/gh",
                Ok((5, "https", "raw.githubusercontent.com", 443, "/", "/")),
            ),
            (
                "/github/../gh/a",
                Ok((5, "https", "raw.githubusercontent.com", 443, "/a", "/a")),
            ),
            (
                "/gh/../../github/enterprise/../x",
                Ok((0, "https", "ghe.example.com", 8443, "/api/v3/x", "/x")),
            ),
            ("/GitHub/x", Err(ErrorCode::RouteNotFound)),
            ("/", Err(ErrorCode::RouteNotFound)),
            ("relative", Err(ErrorCode::BadRequest)),
        ];
        for (path, want) in cases {
            let req = Req::route("/").path(path.split('?').next().unwrap());
            let req = match path.split_once('?') {
                Some((p, q)) => Req::route(&format!("{p}?{q}")),
                None => req,
            };
            let got = r.resolve(&req.info()).map(|g| {
                let t = &g.target;
                (
                    g.api.unwrap(),
                    t.scheme.as_str(),
                    t.host.to_string(),
                    t.port,
                    t.path_and_query.clone(),
                    g.match_path().to_owned(),
                )
            });
            let want = want
                .map(|(a, s, h, p, pq, m)| (a, s, h.to_owned(), p, pq.to_owned(), m.to_owned()));
            assert_eq!(got.map_err(|e| e.code), want, "{path}");
        }
    }

    #[test]
    fn describes_routes_without_the_query() {
        let r = resolver();
        let req = Req::route("/github/repos/x?token=abc");
        let got = r.resolve(&req.info()).unwrap();
        assert_eq!(
            got.describe(Some("github")),
            "route prefix matched API \"github\"; allow rules see /repos/x; \
             forwarding to https://ghe.example.com:8443/api/v3/repos/x"
        );
    }

    #[test]
    fn catch_all_route() {
        let cfg = config(
            json!({ "apis": [{ "name": "all", "route": "/", "upstream": "http://up.internal:9000/base" }] }),
        );
        let r = Resolver::compile(&cfg, &mut Vec::new());
        let req = Req::route("/x/y");
        let got = r.resolve(&req.info()).unwrap();
        assert_eq!(got.target.path_and_query, "/base/x/y");
        assert_eq!(got.match_path(), "/x/y");
        assert_eq!(
            r.resolve(&Req::route("/").info())
                .unwrap()
                .target
                .path_and_query,
            "/base/"
        );
    }

    #[test]
    fn compile_errors_have_key_paths() {
        let errs = compile_errors(json!({ "apis": [
            { "name": "a", "hosts": ["*"] },
            { "name": "b", "hosts": ["ok.com", "OK.com."] },
            { "name": "c", "route": "github", "upstream": "https://x.com" },
            { "name": "d", "route": "/x", "hosts": ["*.w.com"] },
            { "name": "e", "route": "/y", "upstream": "ftp://x.com" },
            { "name": "f" },
            { "name": "g", "route": "/g/", "hosts": ["g.com"] },
            { "name": "h", "route": "/h", "upstream": "https://user:pa55word@h.com/" },
            { "name": "i", "route": "/i/../j", "hosts": ["i.com"] },
            { "name": "j", "route": "/j", "upstream": "https://j.com/a?b=c" },
            { "name": "k", "route": "/g", "hosts": ["k.com"] }
        ]}));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "apis[0].hosts[0]",
                "apis[1].hosts[1]",
                "apis[2].route",
                "apis[3].route",
                "apis[4].upstream",
                "apis[5]",
                "apis[7].upstream",
                "apis[8].route",
                "apis[9].upstream",
                "apis[10].route",
            ]
        );
        assert!(errs.iter().all(|e| !e.message.contains("pa55word")));
    }
}

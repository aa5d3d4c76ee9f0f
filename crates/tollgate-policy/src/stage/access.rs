//! Access stage: may this consumer send this request to this destination?
//!
//! Checks, in order, each answering 403 with its own code:
//! 1. emergency switches (`emergency_stop`): deny everything, this API, or
//!    this consumer. Operators flip them during incidents, so report mode
//!    never softens them.
//! 2. CONNECT only: the port must be in `connect.allowed_ports`
//!    (`port_not_allowed`).
//! 3. the consumer's `apis` list (`consumer_not_allowed`).
//! 4. for a matched API, its allow rules (`endpoint_not_allowed`): an empty
//!    list allows everything; a rule matches when the method is listed
//!    (case-insensitive; none listed = any) and the path matches one of its
//!    patterns (none = any). CONNECT tunnels carry no visible method or path,
//!    so allow rules do not apply to them; the host and consumer checks do.
//! 5. for a destination no API matches: a consumer with `allow_unmatched:
//!    false` is refused, then `default_action` decides (`deny` refuses,
//!    `report` lets it through and records what deny would have done).
//!    Both answer `destination_not_allowed`.
//!
//! Checks 2–5 are subject to report mode (global `report_only` or the API's
//! `mode: report`): they are recorded in `Evaluation::reported` and the
//! request continues.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use tollgate_config::{Config, DefaultAction, Mode};

use super::Ctx;
use super::resolve::Resolved;
use crate::error::{ErrorCode, GatewayError};
use crate::pattern::PathPattern;
use crate::pipeline::PathError;
use crate::request::{RequestInfo, TrafficKind};
use crate::switches::SwitchState;

const STAGE: &str = "access";

/// One compiled allow rule.
#[derive(Debug)]
struct Rule {
    /// Upper-case; empty = any method.
    methods: Box<[Method]>,
    /// Empty = any path.
    paths: Box<[PathPattern]>,
}

impl Rule {
    fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str())))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }
}

/// A compiled API (same index as in `config.apis`).
#[derive(Debug)]
pub(crate) struct ApiEntry {
    pub(crate) name: Arc<str>,
    pub(crate) mode: Mode,
    rules: Vec<Rule>,
}

/// A compiled consumer. The anonymous consumer is one of these too.
#[derive(Debug)]
pub(crate) struct ConsumerEntry {
    pub(crate) name: Arc<str>,
    /// `may_call[api]`; `None` = every API.
    may_call: Option<Box<[bool]>>,
    allow_unmatched: bool,
}

/// The compiled access stage, plus the name tables the other stages use.
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) apis: Vec<ApiEntry>,
    pub(crate) consumers: Vec<ConsumerEntry>,
    /// Index in `consumers` used for callers no consumer matched: the
    /// configured consumer named `anonymous` if there is one (so its `apis`
    /// list applies), else an implicit entry that may call every API.
    pub(crate) anonymous: usize,
    default_action: DefaultAction,
    connect_ports: Box<[u16]>,
}

fn compile_rules(i: usize, cfg: &tollgate_config::Api, errs: &mut Vec<PathError>) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(cfg.allow.len());
    for (j, rule) in cfg.allow.iter().enumerate() {
        let mut methods = Vec::with_capacity(rule.methods.len());
        for (k, m) in rule.methods.iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if upper != "*" => methods.push(method),
                _ => errs.push(PathError {
                    path: format!("apis[{i}].allow[{j}].methods[{k}]"),
                    message: format!("{m:?} is not an HTTP method (omit `methods` to allow any)"),
                }),
            }
        }
        let mut paths = Vec::with_capacity(rule.paths.len());
        for (k, p) in rule.paths.iter().enumerate() {
            match PathPattern::parse(p) {
                Ok(pattern) => paths.push(pattern),
                Err(message) => errs.push(PathError {
                    path: format!("apis[{i}].allow[{j}].paths[{k}]"),
                    message,
                }),
            }
        }
        rules.push(Rule {
            methods: methods.into_boxed_slice(),
            paths: paths.into_boxed_slice(),
        });
    }
    rules
}

impl Access {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut api_index: HashMap<&str, usize> = HashMap::new();
        let mut apis = Vec::with_capacity(cfg.apis.len());
        for (i, api) in cfg.apis.iter().enumerate() {
            if api.name.is_empty() {
                errs.push(PathError {
                    path: format!("apis[{i}].name"),
                    message: "must not be empty".to_owned(),
                });
            } else if let Some(prev) = api_index.insert(&api.name, i) {
                errs.push(PathError {
                    path: format!("apis[{i}].name"),
                    message: format!("API name {:?} is already used by apis[{prev}]", api.name),
                });
            }
            apis.push(ApiEntry {
                name: Arc::from(api.name.as_str()),
                mode: api.mode,
                rules: compile_rules(i, api, errs),
            });
        }
        let mut consumers = Vec::with_capacity(cfg.consumers.len() + 1);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, c) in cfg.consumers.iter().enumerate() {
            if c.name.is_empty() {
                errs.push(PathError {
                    path: format!("consumers[{i}].name"),
                    message: "must not be empty".to_owned(),
                });
            } else if let Some(prev) = seen.insert(&c.name, i) {
                errs.push(PathError {
                    path: format!("consumers[{i}].name"),
                    message: format!(
                        "consumer name {:?} is already used by consumers[{prev}]",
                        c.name
                    ),
                });
            }
            let may_call = c.apis.as_ref().map(|list| {
                let mut allowed = vec![false; cfg.apis.len()].into_boxed_slice();
                for (j, name) in list.iter().enumerate() {
                    match api_index.get(name.as_str()) {
                        Some(&a) => allowed[a] = true,
                        None => errs.push(PathError {
                            path: format!("consumers[{i}].apis[{j}]"),
                            message: format!("no API is named {name:?}"),
                        }),
                    }
                }
                allowed
            });
            consumers.push(ConsumerEntry {
                name: Arc::from(c.name.as_str()),
                may_call,
                allow_unmatched: c.allow_unmatched,
            });
        }
        let anonymous = match seen.get("anonymous") {
            Some(&i) => i,
            None => {
                consumers.push(ConsumerEntry {
                    name: Arc::from("anonymous"),
                    may_call: None,
                    allow_unmatched: true,
                });
                consumers.len() - 1
            }
        };
        if cfg.connect.allowed_ports.contains(&0) {
            let at = cfg
                .connect
                .allowed_ports
                .iter()
                .position(|p| *p == 0)
                .unwrap_or(0);
            errs.push(PathError {
                path: format!("connect.allowed_ports[{at}]"),
                message: "port 0 is not a port".to_owned(),
            });
        }
        Self {
            apis,
            consumers,
            anonymous,
            default_action: cfg.default_action,
            connect_ports: cfg.connect.allowed_ports.clone().into_boxed_slice(),
        }
    }

    pub(crate) fn consumer_name(&self, consumer: usize) -> Arc<str> {
        self.consumers
            .get(consumer)
            .map_or_else(|| Arc::from("anonymous"), |c| c.name.clone())
    }

    /// A consumer's index by name (`anonymous` included).
    pub(crate) fn consumer_index(&self, name: &str) -> Option<usize> {
        if name == "anonymous" {
            return Some(self.anonymous);
        }
        self.consumers.iter().position(|c| &*c.name == name)
    }

    pub(crate) fn check(
        &self,
        ctx: &mut Ctx,
        req: &RequestInfo<'_>,
        consumer: usize,
        resolved: &Resolved<'_>,
        switches: &SwitchState,
    ) -> Result<Option<usize>, GatewayError> {
        let Some(who) = self.consumers.get(consumer) else {
            return Err(GatewayError::new(
                ErrorCode::Internal,
                "unknown consumer index",
            ));
        };
        let api = resolved.api.and_then(|a| self.apis.get(a).map(|e| (a, e)));

        if switches.deny_all {
            ctx.refuse(
                STAGE,
                stop("all traffic is stopped by an operator"),
                false,
                || "emergency switch: all traffic is stopped".to_owned(),
            )?;
        }
        if let Some((_, e)) = api
            && switches.denied_apis.contains(&*e.name)
        {
            let detail = format!("traffic to API {:?} is stopped by an operator", e.name);
            ctx.refuse(STAGE, stop(detail), false, || {
                format!("emergency switch: API {:?} is stopped", e.name)
            })?;
        }
        if switches.denied_consumers.contains(&*who.name) {
            let detail = format!(
                "traffic from consumer {:?} is stopped by an operator",
                who.name
            );
            ctx.refuse(STAGE, stop(detail), false, || {
                format!("emergency switch: consumer {:?} is stopped", who.name)
            })?;
        }

        let connect = req.kind == TrafficKind::Connect;
        if connect && !self.connect_ports.contains(&req.port) {
            let err = GatewayError::new(
                ErrorCode::PortNotAllowed,
                format!("CONNECT to port {} is not allowed", req.port),
            );
            ctx.refuse(STAGE, err, true, || {
                format!(
                    "CONNECT port {} is not in connect.allowed_ports {:?}",
                    req.port, self.connect_ports
                )
            })?;
        }

        let Some((a, e)) = api else {
            return self.check_unmatched(ctx, who).map(|()| None);
        };
        if let Some(list) = &who.may_call
            && !list.get(a).copied().unwrap_or(false)
        {
            let detail = format!("consumer {:?} may not call API {:?}", who.name, e.name);
            ctx.refuse(
                STAGE,
                GatewayError::new(ErrorCode::ConsumerNotAllowed, detail),
                true,
                || {
                    format!(
                        "consumer {:?} may not call API {:?} (not in its apis list)",
                        who.name, e.name
                    )
                },
            )?;
        }
        if connect {
            ctx.step(STAGE, crate::Verdict::Continue, || {
                format!("CONNECT to API {:?} allowed; its allow rules need a method and path, which a tunnel does not show", e.name)
            });
            return Ok(None);
        }
        let path = resolved.match_path();
        if e.rules.is_empty() {
            ctx.step(STAGE, crate::Verdict::Continue, || {
                format!(
                    "{} {path} allowed: API {:?} has no allow rules",
                    req.method, e.name
                )
            });
            return Ok(None);
        }
        match e.rules.iter().position(|r| r.matches(req.method, path)) {
            Some(j) => {
                ctx.step(STAGE, crate::Verdict::Continue, || {
                    format!("{} {path} allowed by apis[{a}].allow[{j}]", req.method)
                });
                Ok(Some(j))
            }
            None => {
                let detail = format!("this method and path are not allowed for API {:?}", e.name);
                ctx.refuse(
                    STAGE,
                    GatewayError::new(ErrorCode::EndpointNotAllowed, detail),
                    true,
                    || {
                        format!(
                            "{} {path} matches none of apis[{a}].allow (API {:?})",
                            req.method, e.name
                        )
                    },
                )
                .map(|()| None)
            }
        }
    }

    fn check_unmatched(&self, ctx: &mut Ctx, who: &ConsumerEntry) -> Result<(), GatewayError> {
        if !who.allow_unmatched {
            let detail = format!("consumer {:?} may only call configured APIs", who.name);
            ctx.refuse(
                STAGE,
                GatewayError::new(ErrorCode::DestinationNotAllowed, detail),
                true,
                || {
                    format!(
                        "no API matches and consumer {:?} has allow_unmatched: false",
                        who.name
                    )
                },
            )?;
        }
        let err = || {
            GatewayError::new(
                ErrorCode::DestinationNotAllowed,
                "no configured API matches this destination",
            )
        };
        match self.default_action {
            DefaultAction::Allow => {
                ctx.step(STAGE, crate::Verdict::Continue, || {
                    "no API matches; default_action: allow".to_owned()
                });
                Ok(())
            }
            DefaultAction::Deny => ctx.refuse(STAGE, err(), true, || {
                "no API matches; default_action: deny".to_owned()
            }),
            DefaultAction::Report => {
                ctx.report(STAGE, err(), || {
                    "no API matches; default_action: report (would deny)".to_owned()
                });
                Ok(())
            }
        }
    }
}

fn stop(detail: impl Into<std::borrow::Cow<'static, str>>) -> GatewayError {
    GatewayError::new(ErrorCode::EmergencyStop, detail)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::Switches;
    use crate::test_support::{Req, compile_errors, denied, policy, reported};

    fn cfg(default_action: &str) -> Value {
        let who = |name: &str| json!({ "header": { "name": "x-who", "value": name } });
        json!({
            "default_action": default_action,
            "connect": { "allowed_ports": [443, 8443] },
            "consumers": [
                { "name": "checkout", "identify": who("checkout"), "apis": ["github"] },
                { "name": "ops", "identify": who("ops") },
                { "name": "strict", "identify": who("strict"), "allow_unmatched": false }
            ],
            "apis": [
                {
                    "name": "github",
                    "hosts": ["api.github.com"],
                    "route": "/github",
                    "allow": [
                        { "methods": ["GET"], "paths": ["/repos/{owner}/{repo}", "/repos/{owner}/{repo}/**"] },
                        { "methods": ["post"], "paths": ["/repos/*/*/issues"] },
                        { "paths": ["/meta"] }
                    ]
                },
                { "name": "stripe", "hosts": ["api.stripe.com"] }
            ]
        })
    }

    fn gh(path: &str) -> Req {
        Req::forward("http://api.github.com/").path(path)
    }

    #[test]
    fn applies_allow_rules_and_consumer_lists() {
        let p = policy(cfg("allow"));
        let cases: Vec<(&str, Req, Option<&str>)> = vec![
            ("checkout", gh("/repos/a/b"), None),
            ("checkout", gh("/repos/a/b/issues/1"), None),
            ("checkout", gh("/repos/a/b").method("get"), None),
            ("checkout", gh("/repos/a/b/issues").method("POST"), None),
            (
                "checkout",
                gh("/repos/a/b").method("POST"),
                Some("endpoint_not_allowed"),
            ),
            ("checkout", gh("/meta").method("DELETE"), None),
            ("checkout", gh("/repos/a"), Some("endpoint_not_allowed")),
            ("checkout", gh("/admin"), Some("endpoint_not_allowed")),
            // Bypass attempts: normalised before matching.
            (
                "checkout",
                gh("/repos/a/b/../../../admin"),
                Some("endpoint_not_allowed"),
            ),
            (
                "checkout",
                gh("/repos/a/b/%2e%2e/%2E%2e/%2e./admin"),
                Some("endpoint_not_allowed"),
            ),
            ("checkout", gh("//repos//a/./b"), None),
            ("checkout", gh("/repos/a/%2e%2ex"), None),
            ("checkout", Req::route("/github/repos/a/b"), None),
            (
                "checkout",
                Req::route("/github/admin"),
                Some("endpoint_not_allowed"),
            ),
            (
                "checkout",
                Req::route("/github/repos/a/b/../../../admin"),
                Some("endpoint_not_allowed"),
            ),
            (
                "checkout",
                Req::forward("http://api.stripe.com/v1/charges"),
                Some("consumer_not_allowed"),
            ),
            (
                "ops",
                Req::forward("http://api.stripe.com/v1/charges").method("POST"),
                None,
            ),
            ("ops", gh("/admin"), Some("endpoint_not_allowed")),
            ("checkout", Req::forward("http://unlisted.example/"), None),
            (
                "strict",
                Req::forward("http://unlisted.example/"),
                Some("destination_not_allowed"),
            ),
            ("strict", gh("/meta"), None),
            // CONNECT: host and consumer rules apply, allow rules cannot.
            ("checkout", Req::connect("api.github.com", 443), None),
            ("checkout", Req::connect("api.github.com", 8443), None),
            (
                "checkout",
                Req::connect("api.github.com", 22),
                Some("port_not_allowed"),
            ),
            (
                "checkout",
                Req::connect("api.stripe.com", 443),
                Some("consumer_not_allowed"),
            ),
            (
                "strict",
                Req::connect("unlisted.example", 443),
                Some("destination_not_allowed"),
            ),
            ("ops", Req::connect("unlisted.example", 443), None),
        ];
        for (who, req, want) in cases {
            let e = req.clone().header("x-who", who).eval(&p);
            assert_eq!(denied(&e), want, "{who} {req:?}");
            assert!(e.reported.is_empty(), "{who} {req:?}");
        }
    }

    #[test]
    fn default_action_decides_unmatched_destinations() {
        let req = Req::forward("http://unlisted.example/").header("x-who", "ops");
        let e = req.eval(&policy(cfg("allow")));
        assert_eq!(
            (denied(&e), reported(&e), e.decision()),
            (None, vec![], "allow")
        );
        let e = req.eval(&policy(cfg("deny")));
        assert_eq!(
            (denied(&e), e.decision()),
            (Some("destination_not_allowed"), "deny")
        );
        let e = req.eval(&policy(cfg("report")));
        assert_eq!(
            (denied(&e), reported(&e), e.decision()),
            (None, vec!["destination_not_allowed"], "report")
        );
        assert!(e.target.is_some());
        // A matched API is not affected by default_action.
        let e = gh("/repos/a/b")
            .header("x-who", "ops")
            .eval(&policy(cfg("deny")));
        assert_eq!(denied(&e), None);
        let e = Req::connect("unlisted.example", 443)
            .header("x-who", "ops")
            .eval(&policy(cfg("deny")));
        assert_eq!(denied(&e), Some("destination_not_allowed"));
    }

    #[test]
    fn emergency_switches_win_even_in_report_mode() {
        let mut c = cfg("allow");
        c["report_only"] = json!(true);
        for p in [policy(cfg("allow")), policy(c)] {
            let req = gh("/repos/a/b").header("x-who", "checkout");
            let other = Req::forward("http://api.stripe.com/").header("x-who", "ops");
            let check = |sw: &Switches, r: &Req| denied(&p.evaluate(&r.info(), sw, false));

            let sw = Switches::default();
            assert_eq!((check(&sw, &req), check(&sw, &other)), (None, None));
            sw.set_api("github", true);
            assert_eq!(
                (check(&sw, &req), check(&sw, &other)),
                (Some("emergency_stop"), None)
            );
            sw.set_api("github", false);
            sw.set_consumer("ops", true);
            assert_eq!(
                (check(&sw, &req), check(&sw, &other)),
                (None, Some("emergency_stop"))
            );
            sw.set_consumer("ops", false);
            sw.set_deny_all(true);
            assert_eq!(
                (check(&sw, &req), check(&sw, &other)),
                (Some("emergency_stop"), Some("emergency_stop"))
            );
            let tunnel = Req::connect("unlisted.example", 443).header("x-who", "ops");
            assert_eq!(check(&sw, &tunnel), Some("emergency_stop"));
            sw.set_deny_all(false);
            sw.set_consumer("anonymous", true);
            assert_eq!(
                check(&sw, &Req::forward("http://api.stripe.com/")),
                Some("emergency_stop")
            );
        }
    }

    #[test]
    fn configured_anonymous_consumer_applies_to_unknown_callers() {
        let mut c = cfg("allow");
        c["consumers"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "name": "anonymous", "identify": { "source": ["192.0.2.200"] }, "apis": ["stripe"] }));
        let p = policy(c);
        let e = gh("/repos/a/b").eval(&p);
        assert_eq!(
            (e.consumer.as_deref(), denied(&e)),
            (Some("anonymous"), Some("consumer_not_allowed"))
        );
        assert_eq!(
            denied(&Req::forward("http://api.stripe.com/").eval(&p)),
            None
        );
    }

    #[test]
    fn compile_errors_have_key_paths() {
        let errs = compile_errors(json!({
            "connect": { "allowed_ports": [443, 0] },
            "consumers": [
                { "name": "a", "identify": { "source": ["10.0.0.1"] }, "apis": ["x", "nope"] },
                { "name": "a", "identify": { "source": ["10.0.0.2"] } }
            ],
            "apis": [
                { "name": "x", "hosts": ["x.com"], "allow": [
                    { "methods": ["GET", "GE T", "*"], "paths": ["/ok", "/**a", "/{}", "/{x", "/a*b", "", "nope", "/{id}/{id}"] }
                ]},
                { "name": "x", "hosts": ["y.com"], "allow": [{ "paths": ["/fine"] }, { "paths": ["/x/{y}/**z"] }] }
            ]
        }));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "apis[0].allow[0].methods[1]",
                "apis[0].allow[0].methods[2]",
                "apis[0].allow[0].paths[1]",
                "apis[0].allow[0].paths[2]",
                "apis[0].allow[0].paths[3]",
                "apis[0].allow[0].paths[4]",
                "apis[0].allow[0].paths[5]",
                "apis[0].allow[0].paths[6]",
                "apis[0].allow[0].paths[7]",
                "apis[1].name",
                "apis[1].allow[1].paths[0]",
                "consumers[0].apis[1]",
                "consumers[1].name",
                "connect.allowed_ports[1]",
            ]
        );
    }
}

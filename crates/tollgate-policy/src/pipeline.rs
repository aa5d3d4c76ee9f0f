//! The compiled policy and the fixed order of stages:
//! identify → resolve → access → limits (see `stage/`).
//!
//! The limits stage only plans: it returns the [`crate::LimitPlan`] of the
//! request (keys, costs, scopes) in [`Evaluation::limit_plan`], and the
//! proxy's admission step charges it against the counters, which live outside
//! the policy (on the gateway) so a reload keeps the counts.
//!
//! Report mode is decided here, once per request: refusals by the identify
//! and access stages are only recorded (not enforced) when the config has
//! `report_only: true` or the matched API has `mode: report`. Emergency
//! switches and rejected credentials are always enforced. Because the API
//! (and so its mode) is only known after resolving, the resolve stage runs
//! before the identify decision is applied; its result is traced and acted on
//! in stage order, so nothing a later stage finds can mask an earlier refusal.

use std::sync::Arc;

use tollgate_config::{Config, Mode};

use crate::error::GatewayError;
use crate::evaluation::{Evaluation, Outcome, TraceStep, Verdict};
use crate::request::{RequestInfo, TrafficKind};
use crate::stage::Ctx;
use crate::stage::access::Access;
use crate::stage::credentials::{ApiCredentials, CredentialStage};
use crate::stage::dlp::{DlpRef, DlpStage};
use crate::stage::headers::{CompiledRules, HeaderStage};
use crate::stage::identify::{Identifier, Identity, Via};
use crate::stage::limits::{Limits, Who};
use crate::stage::resolve::Resolver;
use crate::switches::Switches;

/// A semantic config error, located by key path (`apis[0].allow[1].paths[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A compiled, immutable policy. Swapped atomically on reload.
#[derive(Debug)]
pub struct Policy {
    config: Arc<Config>,
    version: u64,
    identify: Identifier,
    resolve: Resolver,
    access: Access,
    limits: Limits,
    credentials: CredentialStage,
    headers: HeaderStage,
    dlp: DlpStage,
}

/// Who is calling, before the identify stage's decision is applied.
enum Caller {
    Found(Identity),
    /// Named by the caller of [`Policy::evaluate_as`] (`tollgate explain`).
    Given(usize),
}

impl Policy {
    /// Compiles a config: resolves API keys, compiles host and path patterns,
    /// and checks cross references. Every problem is returned, each with its
    /// key path; messages never contain secret values.
    pub fn compile(config: Arc<Config>, version: u64) -> Result<Self, Vec<PathError>> {
        let mut errs = Vec::new();
        let access = Access::compile(&config, &mut errs);
        let identify = Identifier::compile(&config, &mut errs);
        let resolve = Resolver::compile(&config, &mut errs);
        let limits = Limits::compile(&config, &mut errs);
        let credentials = CredentialStage::compile(&config, &mut errs);
        let headers = HeaderStage::compile(&config, &mut errs);
        let dlp = DlpStage::compile(&config, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Self {
            config,
            version,
            identify,
            resolve,
            access,
            limits,
            credentials,
            headers,
            dlp,
        })
    }

    /// The data-loss protection profile for a request of `api` by `consumer` (the
    /// consumer's `dlp` replaces the API's), with the API's report mode.
    pub fn dlp(&self, api: &str, consumer: Option<&str>) -> Option<DlpRef<'_>> {
        self.dlp.profile(api, consumer)
    }

    /// Body size limits for a request of `api` by `consumer`: the stricter of both.
    pub fn body_limits(
        &self,
        api: &str,
        consumer: Option<&str>,
    ) -> Option<tollgate_config::BodyLimits> {
        self.dlp.limits(api, consumer)
    }

    /// The credentials injected for `api` (by name), if it has any.
    pub fn credentials(&self, api: &str) -> Option<&ApiCredentials> {
        self.credentials.get(api)
    }

    /// Every API with credentials (for the proxy's OAuth token cache).
    pub fn all_credentials(&self) -> impl Iterator<Item = (&Arc<str>, &ApiCredentials)> {
        self.credentials.iter()
    }

    /// Provider back-off per key: leave key `key` of `api` out of rotation
    /// until `until` while another key is available. False if there is no
    /// such API or key.
    pub fn skip_key(&self, api: &str, key: &str, until: std::time::Instant) -> bool {
        self.credentials
            .get(api)
            .is_some_and(|c| c.skip_key(key, until))
    }

    /// Header rules for a request of `api` by `consumer`, in the order they
    /// apply: the API's, then the consumer's.
    pub fn header_rules(
        &self,
        api: Option<&str>,
        consumer: Option<&str>,
    ) -> impl Iterator<Item = &CompiledRules> {
        self.headers.rules(api, consumer)
    }

    /// Trace lines for what would be done to an allowed request on its way
    /// upstream and back (header rules, credentials), for `tollgate explain`.
    /// Secret values are never included; nothing is counted or rotated. A
    /// CONNECT tunnel is opaque: nothing applies to it.
    pub fn describe_outbound(&self, eval: &Evaluation, kind: TrafficKind) -> Vec<TraceStep> {
        let mut out = Vec::new();
        if !matches!(eval.outcome, Outcome::Allow) || kind == TrafficKind::Connect {
            return out;
        }
        let api = eval.api.as_deref();
        let consumer = eval.consumer.as_deref();
        if let Some(a) = api {
            for (stage, reason) in self.dlp.describe(a, consumer) {
                out.push(TraceStep {
                    stage,
                    verdict: Verdict::Continue,
                    reason,
                });
            }
        }
        for (who, rules) in [
            (
                api.map(|a| format!("API {a:?}")),
                api.and_then(|a| self.headers.api(a)),
            ),
            (
                consumer.map(|c| format!("consumer {c:?}")),
                consumer.and_then(|c| self.headers.consumer(c)),
            ),
        ] {
            let (Some(who), Some(rules)) = (who, rules) else {
                continue;
            };
            for (dir, ops) in [("request", &rules.request), ("response", &rules.response)] {
                for line in ops.describe() {
                    out.push(TraceStep {
                        stage: "headers",
                        verdict: Verdict::Continue,
                        reason: format!("{who} {dir}: {line}"),
                    });
                }
            }
        }
        if let Some(c) = api.and_then(|a| self.credentials.get(a)) {
            let keys = c.describe();
            let rotation = if keys.len() > 1 {
                format!(" ({} of {})", c.rotation(), keys.len())
            } else {
                String::new()
            };
            for line in keys {
                out.push(TraceStep {
                    stage: "credentials",
                    verdict: Verdict::Continue,
                    reason: format!("inject {line}{rotation}"),
                });
            }
        }
        out
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration of the API `eval` matched (no name lookup: the index comes from resolve).
    pub fn matched_api(&self, eval: &Evaluation) -> Option<&tollgate_config::Api> {
        eval.api_index.and_then(|i| self.config.apis.get(i))
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Headers to remove before forwarding: every trusted identity header and
    /// every configured API-key header, lower-case. `Proxy-Authorization` is
    /// hop-by-hop and stripped by the proxy anyway; `Authorization` is removed
    /// per request when it carried a Tollgate key (`Evaluation::strip_authorization`).
    pub fn strip_headers(&self) -> &[http::HeaderName] {
        self.identify.strip_headers()
    }

    /// The JWKS of every `auth.jwt` issuer, for the proxy's fetch task (docs/auth.md).
    pub fn jwks(&self) -> impl Iterator<Item = &std::sync::Arc<crate::Jwks>> + '_ {
        self.identify.jwks()
    }

    /// On a route request carrying a JWT whose `kid` its issuer's key set lacks: that set.
    pub fn jwt_missing_key(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<&std::sync::Arc<crate::Jwks>> {
        self.identify.jwt_missing_key(headers)
    }

    /// API names in config order (for metrics pre-registration and the admin API).
    pub fn api_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.access.apis.iter().map(|a| &*a.name)
    }

    /// Every limit of every API, in config order (for the admin API's listing).
    pub fn limit_catalog(&self) -> Vec<crate::LimitInfo> {
        self.limits.catalog(&self.config)
    }

    /// Consumer names in config order, then `anonymous` if it is not configured.
    pub fn consumer_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.access.consumers.iter().map(|c| &*c.name)
    }

    /// Runs the pipeline over one request. With `trace`, every stage adds a
    /// human-readable [`crate::TraceStep`]; without, no trace strings are built.
    /// Rate limits are planned, not charged: an allowed request to an API with
    /// `limits` carries [`Evaluation::limit_plan`] for the admission step.
    pub fn evaluate(&self, req: &RequestInfo<'_>, switches: &Switches, trace: bool) -> Evaluation {
        self.run(
            req,
            Caller::Found(self.identify.identify(req)),
            switches,
            trace,
        )
    }

    /// Like [`Self::evaluate`], but as the named consumer (`anonymous` allowed)
    /// instead of identifying one from the request — for `tollgate explain`,
    /// which cannot present a consumer's secret key. `None` if no consumer has
    /// that name.
    pub fn evaluate_as(
        &self,
        req: &RequestInfo<'_>,
        consumer: &str,
        switches: &Switches,
        trace: bool,
    ) -> Option<Evaluation> {
        let index = self.access.consumer_index(consumer)?;
        Some(self.run(req, Caller::Given(index), switches, trace))
    }

    fn run(
        &self,
        req: &RequestInfo<'_>,
        caller: Caller,
        switches: &Switches,
        trace: bool,
    ) -> Evaluation {
        let mut ctx = Ctx::new(trace);
        let resolved = self.resolve.resolve(req);
        let api = resolved.as_ref().ok().and_then(|r| r.api);
        ctx.report_mode = self.config.report_only
            || api
                .and_then(|a| self.access.apis.get(a))
                .is_some_and(|a| a.mode == Mode::Report);
        let mut eval = Evaluation {
            consumer: None,
            api: None,
            api_index: None,
            target: None,
            outcome: Outcome::Allow,
            reported: Vec::new(),
            trace: Vec::new(),
            strip_authorization: false,
            limit_plan: None,
        };

        // 1. identify
        // An API key in the query string: removed from the target once resolved.
        let mut key_via = None;
        let consumer = match caller {
            Caller::Given(c) => {
                ctx.step("identify", Verdict::Continue, || {
                    format!(
                        "consumer {:?} given by the caller (not identified from the request)",
                        self.access.consumer_name(c)
                    )
                });
                c
            }
            Caller::Found(identity) => {
                if let Identity::Known {
                    via: v @ Via::Query(_),
                    ..
                } = identity
                {
                    key_via = Some(v);
                }
                eval.strip_authorization = matches!(
                    identity,
                    Identity::Known {
                        via: Via::Authorization,
                        ..
                    }
                );
                match self.identify.decide(
                    &mut ctx,
                    identity,
                    &self.access,
                    self.config.unknown_consumer.action,
                ) {
                    Ok(c) => c,
                    Err(e) => return finish(eval, ctx, Some(e)),
                }
            }
        };
        eval.consumer = Some(self.access.consumer_name(consumer));

        // 2. resolve
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                ctx.step("resolve", Verdict::Deny, || e.detail.to_string());
                return finish(eval, ctx, Some(e));
            }
        };
        let api_name = resolved
            .api
            .and_then(|a| self.access.apis.get(a))
            .map(|a| a.name.clone());
        ctx.step("resolve", Verdict::Continue, || {
            resolved.describe(api_name.as_deref())
        });
        eval.api_index = api_name.as_ref().and(resolved.api);
        eval.api = api_name;

        // 3. access
        let state = switches.snapshot();
        let verdict = self
            .access
            .check(&mut ctx, req, consumer, &resolved, &state);
        let api_index = resolved.api;
        let mut target = resolved.target;
        if let Some(via) = key_via
            && let Some(pq) = self.identify.strip_query(via, &target.path_and_query)
        {
            target.path_and_query = pq;
        }
        eval.target = Some(target);
        let rule = match verdict {
            Ok(rule) => rule,
            Err(e) => return finish(eval, ctx, Some(e)),
        };

        // 4. limits
        let (Some(api), Some(api_name)) = (api_index, eval.api.clone()) else {
            return finish(eval, ctx, None);
        };
        if !self.limits.has_limits(api) {
            return finish(eval, ctx, None);
        }
        let consumer_name = eval.consumer.clone().unwrap_or_else(|| Arc::from(""));
        let who = Who {
            api,
            api_name: &api_name,
            consumer: &consumer_name,
            rule,
        };
        if let Err(e) = self.limits.check_shares(&mut ctx, &who) {
            return finish(eval, ctx, Some(e));
        }
        eval.limit_plan = self.limits.plan(&mut ctx, req, who);
        finish(eval, ctx, None)
    }
}

fn finish(mut eval: Evaluation, ctx: Ctx, denied: Option<GatewayError>) -> Evaluation {
    if let Some(e) = denied {
        eval.outcome = Outcome::Deny(e);
    }
    eval.reported = ctx.reported;
    eval.trace = ctx.trace;
    eval
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::test_support::{Req, denied, policy, reported};

    fn cfg(report_only: bool, github_mode: &str) -> Value {
        json!({
            "report_only": report_only,
            "default_action": "deny",
            "unknown_consumer": { "action": "deny" },
            "consumers": [
                { "name": "checkout", "identify": { "header": { "name": "x-who", "value": "checkout" } }, "apis": ["github"] },
                { "name": "ci", "identify": { "api_key": { "key": "ci-secret-key" } }, "allow_unmatched": false }
            ],
            "apis": [
                { "name": "github", "hosts": ["api.github.com"], "mode": github_mode,
                  "allow": [{ "methods": ["GET"], "paths": ["/repos/**"] }] },
                { "name": "stripe", "hosts": ["api.stripe.com"], "allow": [{ "paths": ["/v1/**"] }] }
            ]
        })
    }

    fn checkout(url: &str) -> Req {
        Req::forward(url).header("x-who", "checkout")
    }

    #[test]
    fn report_mode_per_api_and_global() {
        // (report_only, github mode, request, denied, reported, consumer)
        type Case = (
            bool,
            &'static str,
            Req,
            Option<&'static str>,
            Vec<&'static str>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                false,
                "enforce",
                checkout("http://api.github.com/admin"),
                Some("endpoint_not_allowed"),
                vec![],
                Some("checkout"),
            ),
            (
                false,
                "report",
                checkout("http://api.github.com/admin"),
                None,
                vec!["endpoint_not_allowed"],
                Some("checkout"),
            ),
            // Per-API report mode does not reach other APIs.
            (
                false,
                "report",
                checkout("http://api.stripe.com/v1/x"),
                Some("consumer_not_allowed"),
                vec![],
                Some("checkout"),
            ),
            // Unknown callers on a report-mode API are reported and continue as anonymous.
            (
                false,
                "report",
                Req::forward("http://api.github.com/repos/x"),
                None,
                vec!["consumer_unidentified"],
                Some("anonymous"),
            ),
            (
                false,
                "enforce",
                Req::forward("http://api.github.com/repos/x"),
                Some("consumer_unidentified"),
                vec![],
                None,
            ),
            // A wrong key is always enforced.
            (
                false,
                "report",
                Req::forward("http://api.github.com/repos/x")
                    .header("proxy-authorization", "Bearer nope"),
                Some("consumer_unidentified"),
                vec![],
                None,
            ),
            (
                true,
                "enforce",
                Req::forward("http://api.github.com/repos/x")
                    .header("proxy-authorization", "Bearer nope"),
                Some("consumer_unidentified"),
                vec![],
                None,
            ),
            // Global report mode: every reportable refusal is recorded, in order.
            (
                true,
                "enforce",
                checkout("http://api.stripe.com/admin").method("DELETE"),
                None,
                vec!["consumer_not_allowed", "endpoint_not_allowed"],
                Some("checkout"),
            ),
            (
                true,
                "enforce",
                Req::forward("http://unlisted.example/")
                    .header("proxy-authorization", "Bearer ci-secret-key"),
                None,
                vec!["destination_not_allowed", "destination_not_allowed"],
                Some("ci"),
            ),
            (
                true,
                "enforce",
                Req::connect("api.github.com", 22).header("x-who", "checkout"),
                None,
                vec!["port_not_allowed"],
                Some("checkout"),
            ),
            (
                true,
                "enforce",
                Req::forward("http://unlisted.example/"),
                None,
                vec!["consumer_unidentified", "destination_not_allowed"],
                Some("anonymous"),
            ),
            // Failures to resolve a target are never reported-only.
            (
                true,
                "enforce",
                checkout("http://x/").host("bad host"),
                Some("bad_request"),
                vec![],
                Some("checkout"),
            ),
            (
                true,
                "enforce",
                Req::route("/nothing").header("x-who", "checkout"),
                Some("route_not_found"),
                vec![],
                Some("checkout"),
            ),
        ];
        for (report_only, mode, req, want_denied, want_reported, want_consumer) in cases {
            let e = req.eval(&policy(cfg(report_only, mode)));
            let what = format!("report_only={report_only} mode={mode} {req:?}");
            assert_eq!(denied(&e), want_denied, "{what}");
            assert_eq!(reported(&e), want_reported, "{what}");
            assert_eq!(e.consumer.as_deref(), want_consumer, "{what}");
            let report_steps = e
                .trace
                .iter()
                .filter(|s| s.verdict == Verdict::Report)
                .count();
            assert_eq!(report_steps, e.reported.len(), "{what}: {:#?}", e.trace);
        }
    }

    #[test]
    fn trace_explains_every_stage() {
        let p = policy(cfg(false, "enforce"));
        let e = checkout("http://API.github.com/repos/x/y?token=abc").eval(&p);
        let lines: Vec<(&str, Verdict, &str)> = e
            .trace
            .iter()
            .map(|s| (s.stage, s.verdict, s.reason.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "identify",
                    Verdict::Continue,
                    "consumer \"checkout\" by header x-who"
                ),
                (
                    "resolve",
                    Verdict::Continue,
                    "host api.github.com matched API \"github\" (exact)"
                ),
                (
                    "access",
                    Verdict::Continue,
                    "GET /repos/x/y allowed by apis[0].allow[0]"
                ),
            ]
        );
        assert_eq!(e.api.as_deref(), Some("github"));
        let target = e.target.unwrap();
        assert_eq!(
            (&*target.host, target.port, target.path_and_query.as_str()),
            ("api.github.com", 80, "/repos/x/y?token=abc")
        );

        let e = Req::forward("http://api.github.com/admin")
            .header("proxy-authorization", "Bearer ci-secret-key")
            .eval(&p);
        assert_eq!(denied(&e), Some("endpoint_not_allowed"));
        let last = e.trace.last().unwrap();
        assert_eq!((last.stage, last.verdict), ("access", Verdict::Deny));
        assert!(
            e.trace[0].reason.contains("Proxy-Authorization")
                && !e.trace[0].reason.contains("ci-secret")
        );

        // Denied before resolving: no target, and later stages leave no lines.
        let e = Req::forward("http://api.github.com/").eval(&p);
        assert_eq!(
            (e.target.as_ref(), e.api.as_ref(), e.trace.len()),
            (None, None, 1)
        );
        assert_eq!(e.trace[0].verdict, Verdict::Deny);

        // Without tracing, nothing is recorded.
        let e = p.evaluate(
            &checkout("http://api.github.com/repos/x").info(),
            &Switches::default(),
            false,
        );
        assert!(e.trace.is_empty());
        assert_eq!(e.decision(), "allow");
    }

    #[test]
    fn evaluate_as_skips_identification() {
        let p = policy(cfg(false, "enforce"));
        let req = Req::forward("http://api.github.com/repos/x");
        let sw = Switches::default();
        let e = p.evaluate_as(&req.info(), "ci", &sw, true).unwrap();
        assert_eq!((e.consumer.as_deref(), denied(&e)), (Some("ci"), None));
        assert!(e.trace[0].reason.contains("given"));
        let e = p.evaluate_as(&req.info(), "anonymous", &sw, true).unwrap();
        assert_eq!(
            (e.consumer.as_deref(), denied(&e)),
            (Some("anonymous"), None)
        );
        assert!(p.evaluate_as(&req.info(), "nobody", &sw, true).is_none());
        assert_eq!(
            p.consumer_names().collect::<Vec<_>>(),
            ["checkout", "ci", "anonymous"]
        );
        assert_eq!(p.api_names().collect::<Vec<_>>(), ["github", "stripe"]);
        assert_eq!(p.version(), 1);
    }

    #[test]
    fn errors_are_collected_from_every_stage() {
        let errs = crate::test_support::compile_errors(json!({
            "consumers": [{ "name": "a", "identify": { "source": ["nope"] }, "apis": ["missing"] }],
            "apis": [{ "name": "x", "hosts": ["*"], "allow": [{ "paths": ["/**a"] }] }]
        }));
        let paths: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(paths.len(), 4, "{paths:#?}");
        for want in [
            "apis[0].allow[0].paths[0]: ",
            "consumers[0].apis[0]: ",
            "consumers[0].identify.source[0]: ",
            "apis[0].hosts[0]: ",
        ] {
            assert!(
                paths.iter().any(|p| p.starts_with(want)),
                "{want} missing from {paths:#?}"
            );
        }
    }
}

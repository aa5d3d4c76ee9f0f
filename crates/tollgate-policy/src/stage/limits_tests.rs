use serde_json::{Value, json};

use super::*;
use crate::Switches;
use crate::test_support::{Req, compile_errors, config, denied, policy, reported};
use crate::{Evaluation, Policy};

fn cfg(limits: Value, mode: &str) -> Value {
    json!({
        "consumers": [
            { "name": "a", "identify": { "header": { "name": "x-who", "value": "a" } } },
            { "name": "b", "identify": { "header": { "name": "x-who", "value": "b" } } }
        ],
        "apis": [
            { "name": "gh", "hosts": ["api.github.com"], "mode": mode, "limits": limits,
              "allow": [{ "paths": ["/repos/**"] }, { "methods": ["POST"], "paths": ["/gists"] }] },
            { "name": "free", "hosts": ["free.example.com"] }
        ]
    })
}

/// An evaluation followed by what the proxy's admission step does for local limits.
struct Ev {
    e: Evaluation,
    limits: Option<LimitOutcome>,
}

impl std::ops::Deref for Ev {
    type Target = Evaluation;
    fn deref(&self) -> &Evaluation {
        &self.e
    }
}

fn eval(p: &Policy, store: &LocalStore, req: &Req) -> Ev {
    let mut e = p.evaluate(&req.info(), &Switches::default(), true);
    let limits = e.limit_plan.clone().map(|plan| {
        let o = plan.decide_local(store, true);
        match plan.verdict(&o) {
            LimitVerdict::Admitted => {}
            LimitVerdict::Reported(err) => e.reported.push(err),
            LimitVerdict::Refused(err) => e.outcome = crate::Outcome::Deny(err),
        }
        o
    });
    Ev { e, limits }
}

fn gh(who: &str) -> Req {
    Req::forward("http://api.github.com/repos/x").header("x-who", who)
}

#[test]
fn fixed_window_refuses_the_fourth_request_and_names_the_limit() {
    let p = policy(cfg(
        json!([{ "name": "burst", "requests": 3, "per": "1m" }]),
        "enforce",
    ));
    let store = LocalStore::new();
    for left in [2, 1, 0] {
        let e = eval(&p, &store, &gh("a"));
        assert_eq!(denied(&e), None);
        let o = e.limits.clone().unwrap();
        assert!(o.admitted);
        assert_eq!(o.results[0].decision.remaining, left);
        assert_eq!((o.results[0].quota, o.results[0].window_secs), (3, 60));
        assert_eq!(o.retry_after_secs(), None);
    }
    let e = eval(&p, &store, &gh("b"));
    assert_eq!(denied(&e), Some("rate_limited"));
    let crate::Outcome::Deny(err) = &e.outcome else {
        unreachable!()
    };
    assert!(
        err.detail.contains("\"burst\"") && err.detail.contains("\"gh\""),
        "{}",
        err.detail
    );
    let o = e.limits.clone().unwrap();
    assert!(!o.admitted && o.results[0].limited);
    let retry = o.retry_after_secs().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(e.trace.last().unwrap().stage, "limits");

    // The policy alone only plans (nothing is charged), and the trace says so.
    let e = gh("a").eval(&p);
    let plan = e.limit_plan.as_ref().unwrap();
    assert_eq!(denied(&e), None);
    assert_eq!(
        (
            plan.limits[0].request.key.as_str(),
            plan.limits[0].request.cost
        ),
        ("gh:burst:-", 1)
    );
    let last = e.trace.last().unwrap();
    assert_eq!(
        (last.stage, last.verdict),
        ("limits", crate::Verdict::Continue)
    );
    assert!(
        last.reason.contains("burst (local, cost 1)"),
        "{}",
        last.reason
    );
    // A peek reports the refusal without charging.
    let o = plan.decide_local(&store, false);
    assert!(!o.admitted && o.results[0].limited);
    // APIs without limits and unmatched destinations carry no outcome.
    let e = eval(&p, &store, &Req::forward("http://free.example.com/"));
    assert!(e.limits.is_none());
}

#[test]
fn consumers_get_separate_budgets_and_refusals_charge_nothing() {
    let p = policy(cfg(
        json!([
            { "name": "each", "requests": 1, "per": "1h", "by": "consumer" },
            { "name": "total", "requests": 10, "per": "1d" }
        ]),
        "enforce",
    ));
    let store = LocalStore::new();
    assert_eq!(denied(&eval(&p, &store, &gh("a"))), None);
    let e = eval(&p, &store, &gh("a"));
    assert_eq!(denied(&e), Some("rate_limited"));
    let o = e.limits.clone().unwrap();
    assert_eq!(
        o.results.iter().map(|r| r.limited).collect::<Vec<_>>(),
        [true, false]
    );
    // The refused request did not consume the daily limit.
    assert_eq!(o.results[1].decision.remaining, 9);
    assert_eq!(o.tightest().unwrap().name.as_ref(), "each");
    let e = eval(&p, &store, &gh("b"));
    assert_eq!(denied(&e), None);
    let o = e.limits.clone().unwrap();
    assert_eq!(o.results[1].decision.remaining, 8);
    assert_eq!(o.tightest().unwrap().name.as_ref(), "each");

    // A request refused by access never reaches the counters.
    let e = eval(
        &p,
        &store,
        &Req::forward("http://api.github.com/admin").header("x-who", "b"),
    );
    assert_eq!(
        (denied(&e), e.limits.is_none()),
        (Some("endpoint_not_allowed"), true)
    );
}

#[test]
fn report_mode_lets_refused_requests_through() {
    let p = policy(cfg(
        json!([{ "name": "burst", "requests": 1, "per": "1s", "algorithm": "sliding" }]),
        "report",
    ));
    let store = LocalStore::new();
    assert_eq!(reported(&eval(&p, &store, &gh("a"))), Vec::<&str>::new());
    let e = eval(&p, &store, &gh("a"));
    assert_eq!(denied(&e), None);
    assert_eq!(reported(&e), ["rate_limited"]);
    assert_eq!(e.decision(), "report");
    assert!(!e.limits.clone().unwrap().admitted);
}

#[test]
fn tunnels_count_once_and_gcra_bursts() {
    let p = policy(cfg(
        json!([{ "name": "g", "requests": 1, "per": "1h", "algorithm": "gcra", "burst": 2 }]),
        "enforce",
    ));
    let store = LocalStore::new();
    let tunnel = Req::connect("api.github.com", 443).header("x-who", "a");
    assert_eq!(denied(&eval(&p, &store, &tunnel)), None);
    let e = eval(&p, &store, &tunnel);
    let o = e.limits.as_ref().unwrap();
    // GCRA advertises its burst over the time a whole burst takes to refill.
    assert_eq!((o.results[0].quota, o.results[0].window_secs), (2, 7200));
    assert_eq!(denied(&eval(&p, &store, &tunnel)), Some("rate_limited"));
}

fn keys(by: &str, req: &Req, rule: Option<usize>) -> String {
    let c = config(cfg(
        json!([{ "name": "l", "requests": 1, "per": "1m", "by": by }]),
        "enforce",
    ));
    let mut errs = Vec::new();
    let limits = Limits::compile(&c, &mut errs);
    assert!(errs.is_empty());
    let who = Who {
        api: 0,
        api_name: "gh",
        consumer: "a",
        rule,
    };
    key(&limits.apis[0][0], &req.info(), &who)
}

#[test]
fn keys_are_bounded_and_never_hold_header_values() {
    let r = gh("a").header("x-team", "secret-token-1");
    assert_eq!(keys("api", &r, Some(0)), "gh:l:-");
    assert_eq!(keys("consumer", &r, Some(0)), "gh:l:a");
    assert_eq!(keys("endpoint", &r, Some(1)), "gh:l:1");
    assert_eq!(keys("endpoint", &r, None), "gh:l:*");
    let k = keys("header:X-Team", &r, None);
    assert!(k.starts_with("gh:l:") && k.len() == 5 + 16, "{k}");
    assert!(!k.contains("secret"));
    let other = keys(
        "header:x-team",
        &gh("a").header("x-team", "secret-token-2"),
        None,
    );
    assert_ne!(k, other);
    assert_eq!(keys("header:x-team", &gh("a"), None), "gh:l:-");
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
}

#[test]
fn endpoint_limits_follow_the_matched_rule() {
    let p = policy(cfg(
        json!([{ "name": "l", "requests": 1, "per": "1m", "by": "endpoint" }]),
        "enforce",
    ));
    let store = LocalStore::new();
    assert_eq!(denied(&eval(&p, &store, &gh("a"))), None);
    // Another path under the same rule shares its counter.
    let same_rule = Req::forward("http://api.github.com/repos/y/z").header("x-who", "a");
    assert_eq!(denied(&eval(&p, &store, &same_rule)), Some("rate_limited"));
    let gist = Req::forward("http://api.github.com/gists")
        .method("POST")
        .header("x-who", "a");
    assert_eq!(denied(&eval(&p, &store, &gist)), None);
}

#[test]
fn unvalidated_limits_are_compile_errors() {
    let errs = compile_errors(cfg(
        json!([
            { "name": "a", "requests": 0, "per": "1m" },
            { "name": "b", "requests": 1, "per": "90s" },
            { "name": "c", "requests": 1, "per": "0s", "algorithm": "sliding" }
        ]),
        "enforce",
    ));
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "apis[0].limits[0].requests",
            "apis[0].limits[1].per",
            "apis[0].limits[2].per"
        ]
    );
}

#[test]
fn cost_header_weighs_requests_and_month_windows_compile() {
    let p = policy(cfg(
        json!([
            { "name": "tokens", "requests": 10, "per": "1h", "cost": { "header": "x-weight" } },
            { "name": "monthly", "requests": 100, "per": "month", "time_zone": "+02:00",
              "renewal_day": 31, "scope": "global", "on_store_failure": "closed" }
        ]),
        "enforce",
    ));
    let cost = |w: Option<&str>| {
        let mut r = gh("a");
        if let Some(w) = w {
            r = r.header("x-weight", w);
        }
        let e = r.eval(&p);
        e.limit_plan.unwrap().limits[0].request.cost
    };
    // A weight, default 1, invalid or below 1 → 1, capped at the quota.
    assert_eq!(
        [
            cost(Some("4")),
            cost(None),
            cost(Some("x")),
            cost(Some("0")),
            cost(Some("-3")),
            cost(Some("999"))
        ],
        [4, 1, 1, 1, 1, 10]
    );
    let plan = gh("a").eval(&p).limit_plan.unwrap();
    let m = &plan.limits[1];
    assert_eq!(
        m.request.spec,
        LimitSpec::FixedWindow {
            limit: 100,
            window: Window::Month {
                zone: tollgate_state::Zone::Fixed(120),
                renewal_day: 31
            }
        }
    );
    assert_eq!(
        (m.scope, m.on_store_failure),
        (LimitScope::Global, OnStoreFailure::Closed)
    );
    assert!(plan.has_global());
    // Heavier requests use the budget up faster: 4 + 4, then a 4 no longer fits.
    let store = LocalStore::new();
    let local_only = policy(cfg(
        json!([{ "name": "tokens", "requests": 10, "per": "1h", "cost": { "header": "x-weight" } }]),
        "enforce",
    ));
    let heavy = gh("a").header("x-weight", "4");
    assert_eq!(denied(&eval(&local_only, &store, &heavy)), None);
    assert_eq!(denied(&eval(&local_only, &store, &heavy)), None);
    let e = eval(&local_only, &store, &heavy);
    assert_eq!(denied(&e), Some("rate_limited"));
    assert_eq!(e.limits.clone().unwrap().results[0].decision.remaining, 2);
    assert_eq!(denied(&eval(&local_only, &store, &gh("a"))), None);
}

#[test]
fn response_cost_reads_bytes_and_json_paths() {
    let json = ResponseCost::Json {
        path: ["usage", "total_tokens"].map(str::to_owned).into(),
        default: 7,
    };
    let body = br#"{"usage":{"prompt_tokens":3,"total_tokens":812}}"#;
    assert_eq!(json.units(0, body, true), 812);
    // Cut short or too long for the buffer: the default.
    assert_eq!(json.units(0, body, false), 7);
    assert_eq!(json.units(0, b"not json", true), 7);
    assert_eq!(json.units(0, br#"{"usage":{}}"#, true), 7);
    assert_eq!(json.units(0, br#"{"usage":{"total_tokens":"9"}}"#, true), 7);
    assert_eq!(json.units(0, br#"{"usage":{"total_tokens":-2}}"#, true), 7);
    assert_eq!(json.units(0, br#"{"usage":{"total_tokens":2.5}}"#, true), 3);
    assert_eq!(ResponseCost::Bytes.units(1234, b"", false), 1234);
}

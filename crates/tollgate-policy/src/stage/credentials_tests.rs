use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::*;
use crate::test_support::{compile_errors, policy};

fn creds(c: Value) -> crate::Policy {
    policy(json!({ "apis": [{ "name": "x", "hosts": ["x.example"], "credentials": c }] }))
}

fn caller_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("Bearer caller"));
    h.insert(
        "proxy-authorization",
        HeaderValue::from_static("Basic eA=="),
    );
    h.insert("x-api-key", HeaderValue::from_static("caller-key"));
    h.insert("x-other", HeaderValue::from_static("kept"));
    h
}

#[test]
fn header_credential_replaces_caller_credentials() {
    let dir = tempfile_dir();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let p = creds(
        json!({ "header": "X-Api-Key", "value": format!("key ${{file:{}}}", file.display()) }),
    );
    let c = p.credentials("x").unwrap();
    let mut h = caller_headers();
    assert_eq!(c.strip(&mut h, "/a?b=1"), None);
    let key = c.pick();
    assert_eq!(&*key.name, "default");
    assert_eq!(c.inject(key, &mut h, "/a?b=1", None), None);
    assert_eq!(h["x-api-key"], "key s3cret-from-file");
    assert!(h["x-api-key"].is_sensitive());
    assert!(h.get("authorization").is_none() && h.get("proxy-authorization").is_none());
    assert_eq!(h["x-other"], "kept");
    let shown = c.describe().join("\n");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("<redacted>") && shown.contains("${file:"),
        "{shown}"
    );
    assert!(!format!("{p:?}").contains("s3cret"));
}

#[test]
fn without_strip_only_the_injected_header_is_replaced() {
    let p =
        creds(json!({ "header": "x-api-key", "value": "lit", "strip_caller_credentials": false }));
    let c = p.credentials("x").unwrap();
    let mut h = caller_headers();
    c.strip(&mut h, "/");
    let key = c.pick();
    c.inject(key, &mut h, "/", None);
    assert_eq!(h["x-api-key"], "lit");
    assert_eq!(h["authorization"], "Bearer caller");
}

#[test]
fn query_credential_strips_encoded_caller_parameters() {
    let p = creds(json!({ "query": "api_key", "value": "v a&l=ue" }));
    let c = p.credentials("x").unwrap();
    let mut h = HeaderMap::new();
    let pq = c
        .strip(&mut h, "/p?api%5Fkey=evil&x=1&api_key=evil2&api+key=kept")
        .unwrap();
    assert_eq!(pq, "/p?x=1&api+key=kept");
    let key = c.pick();
    assert_eq!(
        c.inject(key, &mut h, &pq, None).unwrap(),
        "/p?x=1&api+key=kept&api_key=v%20a%26l%3Due"
    );
    assert_eq!(c.strip(&mut h, "/p?api_key=1").unwrap(), "/p");
    assert_eq!(
        c.inject(key, &mut h, "/p", None).unwrap(),
        "/p?api_key=v%20a%26l%3Due"
    );
}

#[test]
fn basic_credential() {
    let p = creds(json!({ "basic": { "username": "user", "password": "p:w" } }));
    let c = p.credentials("x").unwrap();
    let mut h = HeaderMap::new();
    c.inject(c.pick(), &mut h, "/", None);
    let want = base64::engine::general_purpose::STANDARD.encode("user:p:w");
    assert_eq!(h["authorization"], format!("Basic {want}").as_str());
    let p = creds(json!({ "basic": { "username": "sk_test" } }));
    let mut h = HeaderMap::new();
    let c = p.credentials("x").unwrap();
    c.inject(c.pick(), &mut h, "/", None);
    let want = base64::engine::general_purpose::STANDARD.encode("sk_test:");
    assert_eq!(h["authorization"], format!("Basic {want}").as_str());
}

#[test]
fn oauth2_token_request_is_form_encoded() {
    let p = creds(json!({ "oauth2": {
        "token_url": "https://auth.example/token", "client_id": "my app",
        "client_secret": "s&cret", "scopes": ["read", "write:all"], "audience": "https://api.example"
    }}));
    let c = p.credentials("x").unwrap();
    let spec = c.keys()[0].oauth2().unwrap();
    assert_eq!(
        spec.form_body(),
        "grant_type=client_credentials&scope=read+write%3Aall&audience=https%3A%2F%2Fapi.example"
    );
    let want = base64::engine::general_purpose::STANDARD.encode("my+app:s%26cret");
    assert_eq!(
        spec.authorization().unwrap(),
        format!("Basic {want}").as_str()
    );
    assert_eq!(spec.refresh_before, Duration::from_secs(30));
    assert!(!format!("{spec:?}").contains("s&cret"));

    let p = creds(json!({ "oauth2": {
        "token_url": "http://127.0.0.1:1/t", "client_id": "id", "client_secret": "sec", "client_auth": "body"
    }}));
    let spec = p.credentials("x").unwrap().keys()[0]
        .oauth2()
        .unwrap()
        .clone();
    assert_eq!(
        spec.form_body(),
        "grant_type=client_credentials&client_id=id&client_secret=sec"
    );
    assert!(spec.authorization().is_none());
    // Injection uses the token the proxy fetched, and removes the caller's.
    let c = p.credentials("x").unwrap();
    let mut h = caller_headers();
    c.strip(&mut h, "/");
    c.inject(
        c.pick(),
        &mut h,
        "/",
        Some(HeaderValue::from_static("Bearer t")),
    );
    assert_eq!(h["authorization"], "Bearer t");
}

fn three_keys(rotation: &str) -> crate::Policy {
    creds(json!({ "rotation": rotation, "keys": [
        { "name": "a", "header": "x-key", "value": "A" },
        { "name": "b", "header": "x-key", "value": "B" },
        { "name": "c", "query": "key", "value": "C" }
    ]}))
}

fn names(c: &ApiCredentials, n: usize, now: Instant) -> Vec<String> {
    (0..n).map(|_| c.pick_at(now).name.to_string()).collect()
}

#[test]
fn round_robin_rotates_and_skips_keys_in_backoff() {
    let p = three_keys("round_robin");
    let c = p.credentials("x").unwrap();
    let now = Instant::now();
    assert_eq!(names(c, 6, now), ["a", "b", "c", "a", "b", "c"]);
    assert!(p.skip_key("x", "b", now + Duration::from_secs(10)));
    assert!(!p.skip_key("x", "nope", now) && !p.skip_key("nope", "a", now));
    assert_eq!(names(c, 4, now), ["a", "c", "a", "c"]);
    // After the back-off, b is back.
    let later = now + Duration::from_secs(11);
    assert!(names(c, 3, later).contains(&"b".to_owned()));
    // All keys in back-off: the one free soonest.
    c.skip_key("a", now + Duration::from_secs(30));
    c.skip_key("b", now + Duration::from_secs(20));
    c.skip_key("c", now + Duration::from_secs(40));
    assert_eq!(names(c, 2, now), ["b", "b"]);
    // Strip covers every key's header and parameter.
    let mut h = HeaderMap::new();
    h.insert("x-key", HeaderValue::from_static("caller"));
    assert_eq!(c.strip(&mut h, "/?key=1&z=2").unwrap(), "/?z=2");
    assert!(h.is_empty());
}

#[test]
fn least_used_picks_the_least_used_key() {
    let p = three_keys("least_used");
    let c = p.credentials("x").unwrap();
    let now = Instant::now();
    assert_eq!(names(c, 3, now), ["a", "b", "c"]);
    c.skip_key("a", now + Duration::from_secs(5));
    assert_eq!(names(c, 4, now), ["b", "c", "b", "c"]);
    let later = now + Duration::from_secs(6);
    // a has 1 use, b and c 3: a catches up.
    assert_eq!(names(c, 3, later), ["a", "a", "a"]);
    assert_eq!(
        c.keys().iter().map(CredentialKey::uses).collect::<Vec<_>>(),
        [4, 3, 3]
    );
}

#[test]
fn config_errors_name_the_key_and_never_the_value() {
    let errs = compile_errors(json!({ "apis": [
        { "name": "a", "credentials": { "header": "x-k", "value": "v ${env:TOLLGATE_SURELY_UNSET_1}" } },
        { "name": "b", "credentials": { "header": "x-k", "query": "k", "value": "v" } },
        { "name": "c", "credentials": { "header": "Host", "value": "v" } },
        { "name": "d", "credentials": { "keys": [
            { "name": "k1", "header": "x", "value": "v" },
            { "name": "k1", "header": "x", "value": "v" },
            { "name": "k3", "basic": { "username": "u", "password": "${env:TOLLGATE_SURELY_UNSET_2}" } },
            { "name": "k4", "oauth2": { "token_url": "ftp://x", "client_id": "i", "client_secret": "s" } },
            { "name": "bad name", "header": "x", "value": "v" },
            { "name": "k5", "oauth2": { "token_url": "https://x/t", "client_id": "i", "client_secret": "${env:TOLLGATE_SURELY_UNSET_3}" } }
        ]}},
        { "name": "e", "credentials": { "header": "x-k" } },
        { "name": "f", "credentials": { "header": "x-k", "value": "bad\nvalue-secret" } },
        { "name": "g", "credentials": { "header": "x-k", "value": "v", "keys": [{ "name": "z", "header": "x", "value": "v" }] } }
    ]}));
    // (The APIs have no hosts: those errors are not this stage's.)
    let got: Vec<String> = errs
        .iter()
        .map(ToString::to_string)
        .filter(|e| e.contains(".credentials"))
        .collect();
    for want in [
        "apis[0].credentials.value: environment variable TOLLGATE_SURELY_UNSET_1 is not set",
        "apis[1].credentials: set exactly one",
        "apis[2].credentials.header: host cannot carry a credential",
        "apis[3].credentials.keys[1].name: duplicate key name \"k1\"",
        "apis[3].credentials.keys[2].basic.password: environment variable TOLLGATE_SURELY_UNSET_2",
        "apis[3].credentials.keys[3].oauth2.token_url: ",
        "apis[3].credentials.keys[4].name: must be non-empty",
        "apis[3].credentials.keys[5].oauth2.client_secret: environment variable TOLLGATE_SURELY_UNSET_3",
        "apis[4].credentials.value: header needs a value",
        "apis[5].credentials.value: the resolved value is not a valid header value",
        "apis[6].credentials: use either keys or a single credential",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "{want} missing from {got:#?}"
        );
    }
    assert_eq!(got.len(), 11, "{got:#?}");
    assert!(!got.iter().any(|g| g.contains("value-secret")));
}

#[test]
fn keys_travel_over_plain_http_only_to_loopback_or_when_allowed() {
    let p = creds(json!({ "header": "x-k", "value": "v" }));
    let c = p.credentials("x").unwrap();
    assert!(c.may_send("https", "api.example.com"));
    assert!(!c.may_send("http", "api.example.com"));
    for host in [
        "127.0.0.1",
        "127.3.4.5",
        "[::1]",
        "localhost",
        "::ffff:127.0.0.1",
    ] {
        assert!(c.may_send("http", host), "{host}");
    }
    let p = creds(json!({ "header": "x-k", "value": "v", "allow_plaintext": true }));
    assert!(
        p.credentials("x")
            .unwrap()
            .may_send("http", "api.example.com")
    );

    // A route to a plain-http upstream is refused at load unless allowed.
    let errs = compile_errors(json!({ "apis": [
        { "name": "a", "route": "/a", "upstream": "http://10.0.0.5:8080", "credentials": { "header": "x-k", "value": "v" } }
    ]}));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "apis[0].upstream");
    for upstream in ["http://127.0.0.1:9000", "https://10.0.0.5"] {
        policy(
            json!({ "apis": [{ "name": "a", "route": "/a", "upstream": upstream,
            "credentials": { "header": "x-k", "value": "v" } }] }),
        );
    }
    policy(
        json!({ "apis": [{ "name": "a", "route": "/a", "upstream": "http://10.0.0.5",
        "credentials": { "header": "x-k", "value": "v", "allow_plaintext": true } }] }),
    );
}

#[test]
fn candidates_peek_and_preferred_keep_the_rotation_moving() {
    let p = three_keys("round_robin");
    let c = p.credentials("x").unwrap();
    let now = Instant::now();
    assert_eq!(&*c.peek().name, "a");
    assert_eq!(&*c.peek().name, "a", "peeking counts nothing");
    assert_eq!(&*c.pick_preferred("a").name, "a");
    assert_eq!(&*c.peek().name, "b");
    // A preferred key in back-off is not used: the rotation picks.
    c.skip_key("c", now + Duration::from_secs(30));
    assert_eq!(&*c.pick_preferred("c").name, "b");
    // Candidates: from this request's turn, keys in back-off last.
    let order: Vec<&str> = c.candidates().iter().map(|&i| &*c.keys()[i].name).collect();
    assert_eq!(order, ["a", "b", "c"]);
    assert_eq!(c.keys()[2].uses(), 0);
    assert_eq!(&*c.take(1).unwrap().name, "b");
    assert!(c.take(9).is_none());
    assert!(!c.has_key_limits());
}

#[test]
fn key_limits_compile_into_per_key_plans_and_are_checked() {
    let p = creds(json!({ "keys": [
        { "name": "a", "header": "x-key", "value": "A",
          "limits": [{ "name": "minute", "requests": 2, "per": "1m" },
                     { "name": "tenant", "requests": 5, "per": "1h", "by": "header:x-tenant" }] },
        { "name": "b", "header": "x-key", "value": "B" }
    ]}));
    let c = p.credentials("x").unwrap();
    assert!(c.has_key_limits());
    let mut h = HeaderMap::new();
    h.insert("x-tenant", HeaderValue::from_static("t1"));
    let plan = c.key_plan(0, "alice", &h).unwrap();
    assert_eq!(&*plan.api, "x");
    let names: Vec<&str> = plan.limits.iter().map(|l| &*l.name).collect();
    assert_eq!(names, ["a/minute", "a/tenant"]);
    assert_eq!(plan.limits[0].request.key, "x:a/minute:-");
    assert!(plan.limits[1].request.key.starts_with("x:a/tenant:"));
    assert!(!plan.limits[1].request.key.contains("t1"));
    assert!(c.key_plan(1, "alice", &h).is_none(), "b has no limits");
    let shown = c.describe();
    assert!(
        shown[0].ends_with("own limits: minute (2 per 1m, local), tenant (5 per 1h, local)"),
        "{shown:?}"
    );
    assert!(!shown[1].contains("own limits"));
    let store = tollgate_state::LocalStore::new();
    assert!(plan.decide_local(&store, true).admitted);
    assert!(plan.decide_local(&store, true).admitted);
    let third = plan.decide_local(&store, true);
    assert!(!third.admitted && third.tightest().unwrap().name.as_ref() == "a/minute");

    let errs = compile_errors(
        json!({ "apis": [{ "name": "x", "hosts": ["x.example"], "credentials": { "keys": [
            { "name": "a", "header": "x-key", "value": "A", "limits": [
                { "name": "q", "requests": 2, "per": "1m", "on_limit": { "queue": "5s" } },
                { "name": "q", "requests": 0, "per": "1m" },
                { "name": "g", "requests": 2, "per": "1m", "scope": "global" },
                { "name": "w", "requests": 2, "per": "7s" }
            ]}
        ]}}]}),
    );
    let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
    for want in [
        "apis[0].credentials.keys[0].limits[0].on_limit: a key's limits cannot queue",
        "apis[0].credentials.keys[0].limits[1].name: duplicate limit name",
        "apis[0].credentials.keys[0].limits[1].requests: must be at least 1",
        "apis[0].credentials.keys[0].limits[2].scope: `scope: global` needs `state.redis`",
        "apis[0].credentials.keys[0].limits[3].per: a fixed window must be",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "{want} missing from {got:#?}"
        );
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tollgate-cred-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

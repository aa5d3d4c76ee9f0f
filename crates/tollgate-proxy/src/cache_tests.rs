use super::*;

fn cfg(yaml: &str) -> ApiCache {
    let src = format!("apis:\n  - name: a\n    hosts: [a.example.com]\n    cache: {yaml}\n");
    let loaded = tollgate_config::load_str(&src, "t.yaml").unwrap();
    loaded.config.apis[0].cache.clone().unwrap()
}

fn lookup_key(c: &ApiCache, consumer: Option<&str>, headers: &HeaderMap) -> String {
    lookup_key_with(c, consumer, headers, false, None)
}

fn lookup_key_with(
    c: &ApiCache,
    consumer: Option<&str>,
    headers: &HeaderMap,
    several_keys: bool,
    credential: Option<&str>,
) -> String {
    let api: Arc<str> = "a".into();
    let l = Lookup {
        api: &api,
        cfg: c,
        consumer,
        method: &Method::GET,
        url: "https://a.example.com/x?y=1".into(),
        authority: "a.example.com",
        headers,
        strip_authorization: false,
        several_keys,
        credential: credential.map(Arc::from),
    };
    key(&l)
}

#[test]
fn directives_are_lower_cased_and_unquoted() {
    let v = [HeaderValue::from_static(
        "Max-Age=60, private=\"set-cookie\", , stale-if-error=5",
    )];
    let d = directives(v.iter());
    assert_eq!(
        d,
        [
            ("max-age".to_owned(), Some("60".to_owned())),
            ("private".to_owned(), Some("set-cookie".to_owned())),
            ("stale-if-error".to_owned(), Some("5".to_owned())),
        ]
    );
}

#[test]
fn the_consumer_is_in_the_key_unless_shared() {
    let h = HeaderMap::new();
    // `key` without `consumer`: still per consumer, because sharing was not asked for.
    let c = cfg("{ key: [method, url] }");
    assert_ne!(
        lookup_key(&c, Some("alice"), &h),
        lookup_key(&c, Some("bob"), &h)
    );
    let shared = cfg("{ key: [method, url], shared_across_consumers: true }");
    assert_eq!(
        lookup_key(&shared, Some("alice"), &h),
        lookup_key(&shared, Some("bob"), &h)
    );
}

#[test]
fn configured_headers_split_the_key_and_absent_differs_from_empty() {
    let c = cfg("{ key: [method, url, { headers: [x-tenant] }] }");
    let mut one = HeaderMap::new();
    one.insert("x-tenant", HeaderValue::from_static("one"));
    let mut empty = HeaderMap::new();
    empty.insert("x-tenant", HeaderValue::from_static(""));
    let none = HeaderMap::new();
    let keys = [
        lookup_key(&c, None, &one),
        lookup_key(&c, None, &empty),
        lookup_key(&c, None, &none),
    ];
    assert_ne!(keys[0], keys[1]);
    assert_ne!(keys[1], keys[2]);
    assert_ne!(keys[0], keys[2]);
}

#[test]
fn the_credential_part_splits_by_key_and_is_default_with_several_keys() {
    let h = HeaderMap::new();
    // Shared across consumers, default key: with several keys the key name splits it.
    let c = cfg("{ shared_across_consumers: true }");
    assert_ne!(
        lookup_key_with(&c, Some("alice"), &h, true, Some("one")),
        lookup_key_with(&c, Some("bob"), &h, true, Some("two"))
    );
    assert_eq!(
        lookup_key_with(&c, Some("alice"), &h, true, Some("one")),
        lookup_key_with(&c, Some("bob"), &h, true, Some("one"))
    );
    // One credential: nothing to split by, the consumers share.
    assert_eq!(
        lookup_key_with(&c, Some("alice"), &h, false, Some("default")),
        lookup_key_with(&c, Some("bob"), &h, false, Some("default"))
    );
    // Explicit `credential` with one key, and a `header:` part.
    let c = cfg(
        "{ key: [method, url, credential, \"header:X-Tenant\"], shared_across_consumers: true }",
    );
    let mut t = HeaderMap::new();
    t.insert("x-tenant", HeaderValue::from_static("t1"));
    assert_ne!(
        lookup_key_with(&c, None, &t, false, Some("default")),
        lookup_key_with(&c, None, &h, false, Some("default"))
    );
}

//! Unit tests for the DLP detectors and engine: true positives, near-misses
//! (Luhn-failing numbers, bad IBAN checksums, invalid SSN areas), redaction of
//! raw and form bodies, report mode and the compiled per-API / per-consumer selection.

use std::sync::Arc;

use tollgate_config::dlp::{BuiltinDetector, DlpAction};

use super::dlp::{BodyKind, DlpStage};
use super::dlp_detectors as det;
use crate::pipeline::PathError;

fn config(yaml: &str) -> tollgate_config::Config {
    tollgate_config::load_str(yaml, "test.yaml")
        .map(|l| l.config)
        .unwrap_or_else(|e| panic!("config: {e}"))
}

fn stage(yaml: &str) -> DlpStage {
    let mut errs: Vec<PathError> = Vec::new();
    let s = DlpStage::compile(&config(yaml), &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    s
}

/// A config with one API `a` whose `dlp` is `dlp`.
fn api_yaml(dlp: &str) -> String {
    format!(
        "listen: {{ proxy: 127.0.0.1:0 }}\napis:\n  - name: a\n    hosts: [a.example]\n    dlp: {dlp}\n"
    )
}

/// Finds the single-detector matches of `d` in `text`.
fn found(d: BuiltinDetector, text: &str) -> Vec<String> {
    let re = det::compile(d).unwrap();
    re.find_iter(text.as_bytes())
        .filter(|m| det::validate(d, &text.as_bytes()[m.range()]))
        .map(|m| text[m.range()].to_owned())
        .collect()
}

#[test]
fn cards_need_a_valid_luhn_check() {
    use BuiltinDetector::Card;
    assert_eq!(
        found(Card, "pay 4111111111111111 now"),
        ["4111111111111111"]
    );
    assert_eq!(
        found(Card, "pay 4111 1111 1111 1111."),
        ["4111 1111 1111 1111"]
    );
    assert_eq!(found(Card, "amex 3782-822463-10005"), ["3782-822463-10005"]);
    assert_eq!(
        found(Card, r#"{"pan":"5500005555555559"}"#),
        ["5500005555555559"]
    );
    // Near-misses: one digit off (Luhn fails), too short, part of a longer number, all zeros.
    assert!(found(Card, "order 4111111111111112").is_empty());
    assert!(found(Card, "id 411111111111").is_empty());
    assert!(found(Card, "id 41111111111111110000123").is_empty());
    assert!(found(Card, "0000000000000000").is_empty());
    assert!(det::luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
    assert!(!det::luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
}

#[test]
fn ibans_need_a_valid_checksum() {
    use BuiltinDetector::Iban;
    assert_eq!(
        found(Iban, "to GB82WEST12345698765432 ok"),
        ["GB82WEST12345698765432"]
    );
    assert_eq!(
        found(Iban, "DE89 3704 0044 0532 0130 00"),
        ["DE89 3704 0044 0532 0130 00"]
    );
    assert_eq!(
        found(Iban, "FR1420041010050500013M02606"),
        ["FR1420041010050500013M02606"]
    );
    // Check digits wrong by one, and a transposition.
    assert!(found(Iban, "GB83WEST12345698765432").is_empty());
    assert!(found(Iban, "GB82WEST12345698765423").is_empty());
    assert!(!det::iban(b"GB82"));
}

#[test]
fn ssns_follow_the_area_group_serial_rules() {
    use BuiltinDetector::Ssn;
    assert_eq!(found(Ssn, "ssn 123-45-6789."), ["123-45-6789"]);
    assert_eq!(found(Ssn, "ssn 899-01-0001"), ["899-01-0001"]);
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
    ] {
        assert!(found(Ssn, bad).is_empty(), "{bad}");
    }
    // Nine bare digits are not looked at, nor a longer dashed number.
    assert!(found(Ssn, "123456789").is_empty());
    assert!(found(Ssn, "1123-45-6789").is_empty());
}

#[test]
fn emails_aws_keys_and_private_keys() {
    assert_eq!(
        found(
            BuiltinDetector::Email,
            "mail jane.doe+x@mail.example.co.uk today"
        ),
        ["jane.doe+x@mail.example.co.uk"]
    );
    assert!(found(BuiltinDetector::Email, "user@localhost and @handle").is_empty());
    assert_eq!(
        found(BuiltinDetector::AwsKey, r#"{"k":"AKIAIOSFODNN7EXAMPLE"}"#),
        ["AKIAIOSFODNN7EXAMPLE"]
    );
    assert!(found(BuiltinDetector::AwsKey, "AKIAIOSFODNN7EXAMPL").is_empty());
    assert!(found(BuiltinDetector::AwsKey, "XAKIAIOSFODNN7EXAMPLE").is_empty());
    let pem = "x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\ny";
    assert_eq!(
        found(BuiltinDetector::PrivateKey, pem),
        ["-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"]
    );
    // JSON-escaped newlines and a truncated key (BEGIN line only) are found too.
    assert_eq!(
        found(
            BuiltinDetector::PrivateKey,
            r#""-----BEGIN PRIVATE KEY-----\nAB""#
        ),
        ["-----BEGIN PRIVATE KEY-----"]
    );
    assert!(found(BuiltinDetector::PrivateKey, "-----BEGIN PUBLIC KEY-----").is_empty());
}

#[test]
fn jwts_need_a_json_header_with_alg() {
    // {"alg":"HS256","typ":"JWT"} . {"sub":"1"} . sig
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
    assert_eq!(found(BuiltinDetector::Jwt, &format!("Bearer {jwt}")), [jwt]);
    // {"typ":"JWT"} has no alg; garbage after eyJ does not decode.
    assert!(
        found(
            BuiltinDetector::Jwt,
            "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln"
        )
        .is_empty()
    );
    assert!(found(BuiltinDetector::Jwt, "eyJ!!!!.abcd.efgh").is_empty());
    assert!(found(BuiltinDetector::Jwt, "eyJzzzzzzz.abcdef.ghij").is_empty());
}

#[test]
fn high_entropy_tokens_but_not_words_uuids_or_low_entropy() {
    use BuiltinDetector::HighEntropy;
    let secret = "sk_live_9fQ2xL7pZ3mK8vR1tB6nW4yH0cJ5dE";
    assert_eq!(found(HighEntropy, &format!("key={secret};")), [secret]);
    assert_eq!(
        found(HighEntropy, "3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e"),
        ["3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e"]
    );
    assert!(found(HighEntropy, "550e8400-e29b-41d4-a716-446655440000").is_empty());
    assert!(found(HighEntropy, "the_quick_brown_fox_jumps_over_the_lazy_dog").is_empty());
    assert!(found(HighEntropy, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1111").is_empty());
    assert!(found(HighEntropy, "abc123").is_empty());
    assert!(det::entropy(b"abcd") > 1.99 && det::entropy(b"abcd") < 2.01);
}

#[test]
fn block_wins_and_names_the_detector_never_the_data() {
    let s = stage(&api_yaml(
        "{ detectors: { card: block, email: report, ssn: redact } }",
    ));
    let d = s.profile("a", None).unwrap();
    let body = br#"{"card":"4111111111111111","to":"a@b.example","ssn":"123-45-6789"}"#;
    let scan = d.profile.scan(body, BodyKind::Raw, d.report_mode);
    assert_eq!(scan.blocked_by.as_deref(), Some("card"));
    assert!(scan.redacted.is_none(), "a blocked body is not rewritten");
    assert_eq!(scan.summary(), "card:1,ssn:1,email:1");
    let err = super::dlp::blocked_error("card", "request");
    assert_eq!(err.code.as_str(), "dlp_blocked");
    assert!(err.detail.contains("`card`") && !err.detail.contains("4111"));
}

#[test]
fn redaction_masks_each_match() {
    let s = stage(&api_yaml(
        "{ detectors: { card: redact, email: redact, jwt: report } }",
    ));
    let d = s.profile("a", None).unwrap();
    let body = br#"{"card":"4111 1111 1111 1111","cc":["x@y.example","4111111111111112"]}"#;
    let scan = d.profile.scan(body, BodyKind::Raw, false);
    assert_eq!(
        String::from_utf8(scan.redacted.unwrap()).unwrap(),
        r#"{"card":"[REDACTED:card]","cc":["[REDACTED:email]","4111111111111112"]}"#
    );
    assert!(scan.blocked_by.is_none());
    // Nothing found: no rewrite.
    let clean = d.profile.scan(b"{\"ok\":1}", BodyKind::Raw, false);
    assert!(clean.findings.is_empty() && clean.redacted.is_none());
}

#[test]
fn forms_are_decoded_for_scanning_and_reencoded_when_redacted() {
    let s = stage(&api_yaml("{ detectors: { email: redact, card: report } }"));
    let d = s.profile("a", None).unwrap();
    let body = b"name=Jane+Doe&mail=jane%40example.com&card=4111+1111+1111+1111&x=%ZZ";
    let scan = d.profile.scan(body, BodyKind::Form, false);
    assert_eq!(scan.summary(), "card:1,email:1");
    assert_eq!(
        String::from_utf8(scan.redacted.unwrap()).unwrap(),
        "name=Jane+Doe&mail=%5BREDACTED%3Aemail%5D&card=4111+1111+1111+1111&x=%ZZ"
    );
}

#[test]
fn report_mode_turns_block_into_report() {
    let yaml = "listen: { proxy: 127.0.0.1:0 }\napis:\n  - name: a\n    hosts: [a.example]\n    mode: report\n    dlp: { detectors: { aws_key: block }, max_scan: 10, on_oversize: block }\n";
    let s = stage(yaml);
    let d = s.profile("a", None).unwrap();
    assert!(d.report_mode);
    let scan = d
        .profile
        .scan(b"AKIAIOSFODNN7EXAMPLE", BodyKind::Raw, d.report_mode);
    assert!(scan.blocked_by.is_none());
    assert!(scan.reported_block);
    assert_eq!(scan.findings[0].action, DlpAction::Report);
    assert_eq!(d.profile.oversize(true), super::dlp::Oversize::Report);
    assert_eq!(d.profile.oversize(false), super::dlp::Oversize::Block);
}

#[test]
fn custom_regex_and_keywords() {
    let s = stage(&api_yaml(
        r#"{ custom: [ { name: ticket, regex: "TCK-[0-9]{6}", action: redact }, { name: codename, keywords: [Project Falcon, secret], action: block } ] }"#,
    ));
    let d = s.profile("a", None).unwrap();
    let scan = d
        .profile
        .scan(b"see TCK-123456 and tck-1", BodyKind::Raw, false);
    assert_eq!(
        scan.redacted.as_deref(),
        Some(&b"see [REDACTED:ticket] and tck-1"[..])
    );
    let scan = d
        .profile
        .scan(b"about PROJECT FALCON", BodyKind::Raw, false);
    assert_eq!(scan.blocked_by.as_deref(), Some("codename"));
    // Keywords match whole words only.
    let scan = d.profile.scan(b"call the secretary", BodyKind::Raw, false);
    assert!(scan.findings.is_empty());
}

#[test]
fn invalid_custom_regex_is_a_config_error_with_its_path() {
    let cfg = config(&api_yaml(
        r#"{ custom: [ { name: bad, regex: "([a-z", action: block } ] }"#,
    ));
    let mut errs = Vec::new();
    let _ = DlpStage::compile(&cfg, &mut errs);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "apis[0].dlp.custom[0].regex");
}

#[test]
fn overlapping_findings_count_once_for_the_more_specific_detector() {
    let s = stage(&api_yaml(
        "{ detectors: { jwt: report, high_entropy: report } }",
    ));
    let d = s.profile("a", None).unwrap();
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let scan = d.profile.scan(jwt.as_bytes(), BodyKind::Raw, false);
    assert_eq!(scan.summary(), "jwt:1");
}

#[test]
fn content_types_decide_what_is_scanned() {
    let s = stage(&api_yaml(
        "{ detectors: { card: report }, content_types: [application/xml] }",
    ));
    let p = s.profile("a", None).unwrap().profile;
    assert_eq!(
        p.body_kind(Some("application/json; charset=utf-8")),
        Some(BodyKind::Json)
    );
    assert_eq!(
        p.body_kind(Some("application/vnd.api+json")),
        Some(BodyKind::Json)
    );
    assert_eq!(p.body_kind(Some("text/plain")), Some(BodyKind::Raw));
    assert_eq!(p.body_kind(Some("Application/XML")), Some(BodyKind::Raw));
    assert_eq!(
        p.body_kind(Some("application/x-www-form-urlencoded")),
        Some(BodyKind::Form)
    );
    assert_eq!(p.body_kind(Some("application/octet-stream")), None);
    assert_eq!(p.body_kind(Some("text/event-stream")), None);
    assert_eq!(p.body_kind(None), None);
    let any = stage(&api_yaml(
        "{ detectors: { card: report }, content_types: ['*'] }",
    ));
    let p = any.profile("a", None).unwrap().profile;
    assert_eq!(p.body_kind(None), Some(BodyKind::Raw));
    assert_eq!(p.body_kind(Some("image/png")), Some(BodyKind::Raw));
    assert_eq!(p.body_kind(Some("text/event-stream")), None);
    let sse = stage(&api_yaml(
        "{ detectors: { card: report }, content_types: [text/event-stream] }",
    ));
    let p = sse.profile("a", None).unwrap().profile;
    assert_eq!(p.body_kind(Some("text/event-stream")), Some(BodyKind::Raw));
}

#[test]
fn consumer_profile_replaces_the_apis_and_limits_take_the_stricter() {
    let yaml = "listen: { proxy: 127.0.0.1:0 }
consumers:
  - name: vendor
    identify: { header: { name: x-c, value: v } }
    dlp: { detectors: { email: block } }
    body_limits: { request: 1KiB }
  - name: plain
    identify: { header: { name: x-c, value: p } }
apis:
  - name: a
    hosts: [a.example]
    dlp: { detectors: { card: block } }
    body_limits: { request: 10KiB, response: 1MiB }
";
    let s = stage(yaml);
    let vendor = s.profile("a", Some("vendor")).unwrap();
    assert_eq!(
        vendor
            .profile
            .scan(b"x@y.example", BodyKind::Raw, false)
            .blocked_by
            .as_deref(),
        Some("email")
    );
    let plain = s.profile("a", Some("plain")).unwrap();
    assert!(
        plain
            .profile
            .scan(b"x@y.example", BodyKind::Raw, false)
            .blocked_by
            .is_none()
    );
    let l = s.limits("a", Some("vendor")).unwrap();
    assert_eq!(
        (l.request.map(|b| b.get()), l.response.map(|b| b.get())),
        (Some(1024), Some(1 << 20))
    );
    let l = s.limits("a", Some("plain")).unwrap();
    assert_eq!(l.request.map(|b| b.get()), Some(10 * 1024));
    assert!(s.limits("other", None).is_none());
    let lines = s.describe("a", Some("vendor"));
    assert_eq!(
        lines[0],
        ("body_size", "request 1KiB, response 1MiB".to_owned())
    );
    assert_eq!(lines[1].0, "dlp");
    assert!(
        lines[1].1.starts_with("scan request: email=block;"),
        "{}",
        lines[1].1
    );
    let _: Option<Arc<str>> = None;
}

#[test]
fn config_validation_reports_key_paths() {
    let yaml = api_yaml(
        "{ scan: [], max_scan: 0, custom: [ { name: card, regex: x, action: block }, { name: k, regex: x, keywords: [y], action: report } ] }",
    );
    let err = tollgate_config::load_str(&yaml, "t.yaml")
        .err()
        .unwrap()
        .to_string();
    for path in [
        "apis[0].dlp.scan",
        "apis[0].dlp.max_scan",
        "apis[0].dlp.custom[0].name",
        "apis[0].dlp.custom[1]",
    ] {
        assert!(err.contains(path), "{path} missing in {err}");
    }
}

#[test]
fn consumer_sections_are_validated_too() {
    let yaml = "listen: { proxy: 127.0.0.1:0 }
consumers:
  - name: v
    identify: { header: { name: x-c, value: v } }
    dlp: { detectors: {} }
    body_limits: { request: 0 }
";
    let err = tollgate_config::load_str(yaml, "t.yaml")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("consumers[0].dlp.detectors"), "{err}");
    assert!(err.contains("consumers[0].body_limits.request"), "{err}");
    // Unknown keys are rejected (strict config).
    let err = tollgate_config::load_str(
        &api_yaml("{ detectors: { card: block }, bogus: 1 }"),
        "t.yaml",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("bogus"), "{err}");
    let err = tollgate_config::load_str(&api_yaml("{ detectors: { visa: block } }"), "t.yaml")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("visa"), "{err}");
}

#[test]
fn json_escapes_are_decoded_before_scanning_and_redaction_keeps_valid_json() {
    let s = stage(&api_yaml("{ detectors: { card: redact, email: report } }"));
    let d = s.profile("a", None).unwrap();
    // 4111111111111111 with every digit written as \u00XX, and an e-mail with \u0040.
    let card: String = "4111111111111111"
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let body = format!(r#"{{"note":"pay \"{card}\" now","to":"a\u0040b.example","n":1}}"#);
    let scan = d.profile.scan(body.as_bytes(), BodyKind::Json, false);
    assert_eq!(scan.summary(), "card:1,email:1");
    let out = String::from_utf8(scan.redacted.unwrap()).unwrap();
    assert_eq!(
        out,
        r#"{"note":"pay \"[REDACTED:card]\" now","to":"a\u0040b.example","n":1}"#
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["note"], "pay \"[REDACTED:card]\" now");
    // The same body scanned raw finds nothing: the escapes hide it.
    assert!(
        d.profile
            .scan(body.as_bytes(), BodyKind::Raw, false)
            .findings
            .is_empty()
    );
    // A PEM key whose line breaks are written as \n is found too.
    let s = stage(&api_yaml("{ detectors: { private_key: block } }"));
    let d = s.profile("a", None).unwrap();
    let pem = r#"{"k":"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"}"#;
    let scan = d.profile.scan(pem.as_bytes(), BodyKind::Json, false);
    assert_eq!(scan.blocked_by.as_deref(), Some("private_key"));
}

use super::*;
use crate::model::DefaultAction;

fn errs(src: &str) -> Vec<ConfigError> {
    match load_str(src, "t.yaml") {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.0,
    }
}

fn brief(e: &ConfigError) -> (u32, u32, &str) {
    (e.line, e.column, e.path.as_str())
}

#[test]
fn unknown_key_at_depth_is_located() {
    let src = "\
apis:
  - name: gh
    hosts: [api.github.com]
    allow:
      - methods: [GET]
        pathz: [/x]
";
    let e = errs(src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(brief(&e[0]), (6, 9, "apis[0].allow[0].pathz"));
    assert!(
        e[0].message.contains("unknown field `pathz`"),
        "{}",
        e[0].message
    );
    assert_eq!(e[0].file, "t.yaml");
}

#[test]
fn unknown_top_level_key() {
    let e = errs("listen:\n  proxy: 127.0.0.1:1\nlisen: {}\n");
    assert_eq!(brief(&e[0]), (3, 1, "lisen"));
}

#[test]
fn bad_duration_reports_units_message() {
    let e = errs("dns:\n  timeout: fast\n");
    assert_eq!(e.len(), 1);
    assert_eq!(brief(&e[0]), (2, 12, "dns.timeout"));
    assert_eq!(
        e[0].message,
        "fast".parse::<crate::Duration>().unwrap_err().to_string()
    );
    assert_eq!(
        e[0].to_string(),
        "t.yaml:2:12: dns.timeout: invalid duration \"fast\": expected e.g. 250ms, 5s, 10m, 1h, 1d"
    );
}

#[test]
fn duplicate_keys_are_all_reported_with_other_errors() {
    let src = "\
dns:
  timeout: 5s
  timeout: 6s
server:
  max_headers: 10
  max_headers: 11
upstream:
  connect_timeout: soon
";
    let e = errs(src);
    let got: Vec<_> = e.iter().map(brief).collect();
    assert_eq!(
        got,
        vec![
            (3, 3, "dns.timeout"),
            (6, 3, "server.max_headers"),
            (8, 20, "upstream.connect_timeout")
        ]
    );
    assert!(e[0].message.contains("duplicate key `timeout`"));
}

#[test]
fn several_broken_sections_are_reported_together() {
    let src = "\
dns:
  timeout: fast
consumers:
  - name: ok
    identify: { source: [10.0.0.0/8] }
  - identify: { source: [10.0.0.1] }
apis:
  - name: a
    hosts: [a.example.com]
  - name: b
    hostz: [b.example.com]
  - name: c
    mode: loud
report_only: yes
";
    let e = errs(src);
    let got: Vec<_> = e.iter().map(brief).collect();
    assert_eq!(
        got,
        vec![
            (2, 12, "dns.timeout"),
            (6, 5, "consumers[1]"),
            (11, 5, "apis[1].hostz"),
            (13, 11, "apis[2].mode"),
            (14, 14, "report_only"),
        ],
        "{e:#?}"
    );
    assert!(e[1].message.contains("missing field `name`"));
}

#[test]
fn yaml_syntax_error_is_located() {
    let e = errs("listen:\n  proxy: [127.0.0.1:8080\napis: []\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].line >= 2, "{}", e[0]);
    assert!(e[0].message.starts_with("invalid YAML"), "{}", e[0]);
}

#[test]
fn multiple_documents_are_rejected() {
    let e = errs("report_only: true\n---\nreport_only: false\n");
    assert!(e[0].message.contains("only one YAML document"), "{}", e[0]);
}

#[test]
fn empty_and_comment_only_files_are_default() {
    for src in ["", "\n\n", "# nothing yet\n", "~\n"] {
        let l = load_str(src, "e.yaml").unwrap();
        assert_eq!(l.config, Config::default());
    }
}

#[test]
fn validation_errors_follow_successful_parse() {
    let src = "\
apis:
  - name: a
    hosts: [a.example.com]
  - name: a
    hosts: [b.example.com]
connect:
  allowed_ports: [443, 0]
";
    let e = errs(src);
    let got: Vec<_> = e.iter().map(brief).collect();
    assert_eq!(
        got,
        vec![(4, 5, "apis[1].name"), (7, 24, "connect.allowed_ports[1]")]
    );
}

#[test]
fn flow_style_document_still_reports_an_error() {
    let e = errs("{dns: {timeout: x}, apis: [{name: a, bogus: 1}]}\n");
    assert_eq!(brief(&e[0]), (1, 17, "dns.timeout"));
}

#[test]
fn load_file_reads_files_and_reports_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.yaml");
    std::fs::write(&p, "default_action: deny\n").unwrap();
    assert_eq!(
        load_file(&p).unwrap().config.default_action,
        DefaultAction::Deny
    );
    let missing = dir.path().join("nope.yaml");
    let e = load_file(&missing).unwrap_err();
    assert!(e.0[0].message.contains("cannot read"), "{e}");
    assert_eq!(e.0[0].file, missing.display().to_string());
}

#[test]
fn directory_is_merged_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("10-base.yaml"),
        "default_action: deny\napis:\n  - name: a\n    hosts: [a.example.com]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("20-more.yml"),
        "consumers:\n  - name: c\n    identify: { source: [10.0.0.0/8] }\n    apis: [b]\napis:\n  - name: b\n    hosts: [b.example.com]\n",
    )
    .unwrap();
    std::fs::write(d.join("notes.txt"), "not: [yaml").unwrap();
    std::fs::create_dir(d.join("sub.yaml")).unwrap();
    let l = load_file(d).unwrap();
    assert_eq!(l.config.default_action, DefaultAction::Deny);
    let names: Vec<_> = l.config.apis.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(l.config.consumers.len(), 1);
    let (file, line, _) = l.source.position("apis[1].name").unwrap();
    assert!(file.ends_with("20-more.yml") && line == 6, "{file}:{line}");
}

#[test]
fn directory_errors_point_into_the_right_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("a.yaml"),
        "dns: {timeout: 1s}\napis:\n  - name: x\n    hosts: [x.example.com]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.yaml"),
        "dns: {timeout: 2s}\napis:\n  - name: x\n    hosts: [y.example.com]\n",
    )
    .unwrap();
    let e = load_file(d).unwrap_err().0;
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].file.ends_with("b.yaml") && e[0].path == "dns" && e[0].line == 1,
        "{}",
        e[0]
    );
    assert!(
        e[0].message.contains("already set in") && e[0].message.contains("a.yaml"),
        "{}",
        e[0]
    );

    // Without the conflict, validation of the merged list finds the duplicate name in b.yaml.
    std::fs::write(
        d.join("b.yaml"),
        "apis:\n  - name: x\n    hosts: [y.example.com]\n",
    )
    .unwrap();
    let e = load_file(d).unwrap_err().0;
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].file.ends_with("b.yaml"), "{}", e[0]);
    assert_eq!(
        (e[0].line, e[0].column, e[0].path.as_str()),
        (2, 5, "apis[1].name")
    );
}

#[test]
fn directory_parse_errors_from_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.yaml"), "dns: {timeout: x}\n").unwrap();
    std::fs::write(d.join("b.yaml"), "server: {bogus: 1}\n").unwrap();
    let e = load_file(d).unwrap_err().0;
    let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["dns.timeout", "server.bogus"]);
}

#[test]
fn empty_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_file(dir.path()).unwrap_err();
    assert!(e.0[0].message.contains("no *.yaml"), "{e}");
}

#[test]
fn every_single_section_can_be_merged() {
    let schema = crate::json_schema();
    let props = schema["properties"].as_object().unwrap();
    for key in props.keys() {
        let handled = take_section(&mut Config::default(), &mut Config::default(), key);
        assert_eq!(handled, key != "apis" && key != "consumers", "{key}");
    }
}

#[test]
fn anchors_work_and_unknown_aliases_are_errors() {
    let src = "\
apis:
  - name: a
    hosts: &h [a.example.com]
  - name: b
    hosts: *h
";
    let l = load_str(src, "t.yaml").unwrap();
    assert_eq!(l.config.apis[1].hosts, ["a.example.com"]);
    let e = errs("apis:\n  - name: a\n    hosts: *nope\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].line, 3, "{}", e[0]);
}

#[test]
fn secrets_never_appear_in_errors() {
    let e = errs("admin:\n  token: \"${vault:hunter2}\"\n");
    assert_eq!(e[0].path, "admin.token");
    assert!(
        !e.iter().any(|e| e.to_string().contains("hunter2")),
        "{e:?}"
    );
}

//! Keeps the documentation honest: every error code and every configuration
//! key must be documented, so a new one cannot land undocumented.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

fn doc(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn every_error_code_is_documented() {
    let errors = doc("errors.md");
    let missing: Vec<_> = tollgate_policy::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|code| !errors.contains(&format!("`{code}`")))
        .collect();
    assert!(missing.is_empty(), "docs/errors.md lacks: {missing:?}");
}

fn collect_keys(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            for child in map.values() {
                collect_keys(child, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_keys(i, out)),
        _ => {}
    }
}

#[test]
fn every_config_key_is_documented() {
    let reference = doc("configuration.md");
    let mut keys = BTreeSet::new();
    collect_keys(&tollgate_config::json_schema(), &mut keys);
    assert!(
        keys.contains("apis") && keys.contains("allowed_ports"),
        "schema walk found {keys:?}"
    );
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks: {missing:?}"
    );
}

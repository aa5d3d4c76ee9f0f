//! JSON Schema of the configuration, generated from the types, for editor
//! completion and `tollgate schema`.

use crate::model::Config;

/// The JSON Schema (draft 2020-12) of [`Config`].
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(Config).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_describes_the_config() {
        let s = json_schema();
        assert!(s.is_object());
        let props = &s["properties"];
        for key in [
            "apis",
            "consumers",
            "listen",
            "network_guard",
            "default_action",
        ] {
            assert!(props.get(key).is_some(), "missing {key}");
        }
        // Unknown keys are rejected by the loader; the schema says so too.
        assert_eq!(s["additionalProperties"], serde_json::Value::Bool(false));
    }
}

//! The CustomResourceDefinitions vmetal installs, rendered from the Rust types, and a check that
//! their schemas are structural (what a real API server demands before it accepts a CRD).
//!
//! `vmetal crds` prints [`all_yaml`]; the same YAML is checked in under `deploy/crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::host::BareMetalHost;
use crate::machine::Machine;

/// Error rendering or checking a CRD.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// Serialisation to YAML failed.
    #[error("cannot render CRD {name} as YAML: {source}")]
    Render {
        /// CRD name.
        name: String,
        /// Cause.
        source: serde_yaml::Error,
    },
    /// A schema violates the structural-schema rules.
    #[error("CRD {name} schema is not structural at {path}: {reason}")]
    NotStructural {
        /// CRD name.
        name: String,
        /// JSON path of the offending node.
        path: String,
        /// Which rule it breaks.
        reason: String,
    },
}

/// Every CRD vmetal owns, in install order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![BareMetalHost::crd(), Machine::crd()]
}

/// The file name under `deploy/crds/` for a CRD (`<group>_<plural>.yaml`, as kubebuilder does).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as a YAML document (without the `---` separator).
///
/// Rendered with [`yaml_1_1_safe`], not serde_yaml: kubectl reads YAML 1.1, where a bare `On`
/// or `off` is a boolean, so enum values like `On`/`Off` must be quoted.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let value = serde_json::to_value(crd).map_err(|e| CrdError::Render {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source: serde::ser::Error::custom(e.to_string()),
    })?;
    Ok(yaml_1_1_safe(&value))
}

/// Render a JSON value as block YAML that YAML 1.1 and 1.2 readers parse identically: any
/// string that could read as something else (`On`, `no`, `1e3`, `null`, ...) is double-quoted.
pub fn yaml_1_1_safe(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote_if_needed(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn quote_if_needed(s: &str) -> String {
    const WORDS: [&str; 12] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "=", "<<",
    ];
    let lower = s.to_ascii_lowercase();
    let plain_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " ._/()-+'$".contains(c));
    let starts_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '.' || c == '_' || c == '$');
    let looks_numeric = s.parse::<f64>().is_ok() || s.starts_with('.');
    let plain = !s.is_empty()
        && plain_chars
        && starts_ok
        && !looks_numeric
        && !WORDS.contains(&lower.as_str())
        && !s.ends_with(' ')
        && !s.contains(" '");
    if plain {
        s.to_string()
    } else {
        // A JSON string is a valid YAML double-quoted scalar.
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

fn is_collection(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => false,
    }
}

fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&quote_if_needed(k));
                if is_collection(v) {
                    out.push_str(":\n");
                    let child = if v.is_array() { indent } else { indent + 2 };
                    emit(v, child, out);
                } else {
                    out.push_str(": ");
                    out.push_str(&scalar(v));
                    out.push('\n');
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                if is_collection(item) {
                    let mut nested = String::new();
                    emit(item, indent + 2, &mut nested);
                    // The first line goes after "- ", without its indentation.
                    out.push_str(nested.trim_start());
                } else {
                    out.push_str(&scalar(item));
                    out.push('\n');
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

/// All CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn all_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

/// Check every version's schema against the structural-schema rules of
/// `apiextensions.k8s.io/v1`: every node has a `type` (unless it is int-or-string or preserves
/// unknown fields), no `$ref`, and `allOf`/`anyOf`/`oneOf`/`not` carry no types or defaults.
pub fn check_structural(crd: &CustomResourceDefinition) -> Result<(), CrdError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    for version in &crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        else {
            return Err(CrdError::NotStructural {
                name,
                path: version.name.clone(),
                reason: "version has no openAPIV3Schema".into(),
            });
        };
        let value = serde_json::to_value(schema).map_err(|e| CrdError::NotStructural {
            name: name.clone(),
            path: version.name.clone(),
            reason: e.to_string(),
        })?;
        walk(&name, &value, &mut vec![version.name.clone()], false)?;
    }
    Ok(())
}

fn walk(
    name: &str,
    node: &Value,
    path: &mut Vec<String>,
    in_junctor: bool,
) -> Result<(), CrdError> {
    let fail = |path: &Vec<String>, reason: &str| CrdError::NotStructural {
        name: name.to_string(),
        path: path.join("."),
        reason: reason.to_string(),
    };
    let Some(obj) = node.as_object() else {
        return Err(fail(path, "schema node is not an object"));
    };
    if obj.contains_key("$ref") {
        return Err(fail(path, "$ref is not allowed"));
    }
    let is_flag = |k: &str| obj.get(k).and_then(Value::as_bool) == Some(true);
    if in_junctor {
        for forbidden in [
            "type",
            "default",
            "nullable",
            "additionalProperties",
            "description",
        ] {
            if obj.contains_key(forbidden) {
                return Err(fail(
                    path,
                    &format!("{forbidden} inside allOf/anyOf/oneOf/not"),
                ));
            }
        }
    } else if !obj.contains_key("type")
        && !is_flag("x-kubernetes-int-or-string")
        && !is_flag("x-kubernetes-preserve-unknown-fields")
    {
        return Err(fail(path, "missing type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            path.push(key.clone());
            walk(name, child, path, in_junctor)?;
            path.pop();
        }
    }
    if let Some(items) = obj.get("items") {
        path.push("[]".into());
        walk(name, items, path, in_junctor)?;
        path.pop();
    }
    if let Some(extra) = obj.get("additionalProperties")
        && extra.is_object()
    {
        path.push("{}".into());
        walk(name, extra, path, in_junctor)?;
        path.pop();
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = obj.get(junctor).and_then(Value::as_array) {
            for (i, child) in list.iter().enumerate() {
                path.push(format!("{junctor}[{i}]"));
                walk(name, child, path, true)?;
                path.pop();
            }
        }
    }
    if let Some(not) = obj.get("not") {
        path.push("not".into());
        walk(name, not, path, true)?;
        path.pop();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_crds_are_structural() {
        for crd in all() {
            check_structural(&crd).unwrap();
        }
    }

    #[test]
    fn bmh_crd_names_and_columns_match_metal3() {
        let crd = BareMetalHost::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("baremetalhosts.metal3.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.short_names.clone().unwrap(),
            vec!["bmh".to_string(), "bmhost".to_string()]
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<(String, i32)> = v
            .additional_printer_columns
            .clone()
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.priority.unwrap_or(0)))
            .collect();
        assert_eq!(
            cols,
            [
                ("Status", 1),
                ("State", 0),
                ("Consumer", 0),
                ("BMC", 1),
                ("Online", 0),
                ("Error", 0),
                ("Age", 0)
            ]
            .map(|(n, p)| (n.to_string(), p))
        );
    }

    #[test]
    fn machine_crd_is_namespaced_with_status() {
        let crd = Machine::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("machines.vmetal.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
        let cols: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap()
            .into_iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name)
            .collect();
        assert_eq!(cols, ["Phase", "Host", "Node", "Age"]);
    }

    #[test]
    fn yaml_quotes_what_yaml_1_1_would_misread() {
        let v = serde_json::json!({
            "enum": ["On", "Off", "yes", "1.5", "", "ok value", "a: b", "UEFI"],
            "nested": [{"x": 1, "y": [true, null]}, []],
            "multi": "line one\nline two",
        });
        let yaml = yaml_1_1_safe(&v);
        assert!(yaml.contains("- \"On\"\n"), "{yaml}");
        assert!(yaml.contains("- \"Off\"\n"), "{yaml}");
        assert!(yaml.contains("- \"yes\"\n"), "{yaml}");
        assert!(yaml.contains("- UEFI\n"), "{yaml}");
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn crd_yaml_parses_back_to_the_same_crd() {
        for crd in all() {
            let yaml = to_yaml(&crd).unwrap();
            let back: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(back, crd);
        }
    }

    #[test]
    fn structural_check_rejects_untyped_nodes() {
        let mut crd = Machine::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_mut()
            .unwrap()
            .open_api_v3_schema
            .as_mut()
            .unwrap();
        let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
        spec.type_ = None;
        let err = check_structural(&crd).unwrap_err().to_string();
        assert!(err.contains("v1alpha1.spec"), "{err}");
        assert!(err.contains("missing type"), "{err}");
    }
}

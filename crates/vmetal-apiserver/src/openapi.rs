//! OpenAPI v3 documents per group/version (`/openapi/v3` and `/openapi/v3/apis/<g>/<v>`),
//! built from k8s-openapi's schemas for built-ins and from each CRD's own schema.
//!
//! kubectl reads them to learn that the server validates fields itself (`fieldValidation`) and
//! for `kubectl explain`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::registry::{Registry, ResourceInfo};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The path key of a group/version in the `/openapi/v3` index (`api/v1`, `apis/apps/v1`).
pub fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group/version, with a content hash so clients cache.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in registry.group_versions() {
        if let Some(doc) = group_version_document(registry, &group, &version) {
            let key = gv_key(&group, &version);
            let hash = content_hash(&doc);
            paths.insert(
                key.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}") }),
            );
        }
    }
    json!({ "paths": paths })
}

/// Upper-case hex SHA-256 of a document, as the `hash` query parameter.
pub fn content_hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// The definition name of a CRD kind, as kube-apiserver names it (`io.metal3.v1alpha1.BareMetalHost`).
fn crd_definition_name(r: &ResourceInfo) -> String {
    let reversed: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

fn field_validation_param() -> Value {
    json!({
        "name": "fieldValidation",
        "in": "query",
        "description": "Ignore, Warn or Strict handling of unknown or duplicate fields.",
        "schema": { "type": "string", "uniqueItems": true },
    })
}

fn operations(r: &ResourceInfo, schema_ref: &Value) -> Map<String, Value> {
    let gvk = json!({ "group": r.group, "version": r.version, "kind": r.kind });
    let ns = if r.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let base = format!("{}{ns}/{}", r.gv_path(), r.plural);
    let body = json!({ "content": { "application/json": { "schema": schema_ref } } });
    let op = |action: &str, with_body: bool| {
        let mut o = json!({
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": schema_ref } } } },
        });
        if with_body {
            o["requestBody"] = body.clone();
            o["parameters"] = json!([field_validation_param()]);
        }
        o
    };
    let mut paths = Map::new();
    paths.insert(
        base.clone(),
        json!({ "get": op("list", false), "post": op("post", true) }),
    );
    paths.insert(
        format!("{base}/{{name}}"),
        json!({
            "get": op("get", false),
            "put": op("put", true),
            "patch": op("patch", true),
            "delete": op("delete", false),
        }),
    );
    if r.status_subresource {
        paths.insert(
            format!("{base}/{{name}}/status"),
            json!({ "get": op("get", false), "put": op("put", true), "patch": op("patch", true) }),
        );
    }
    paths
}

/// The OpenAPI v3 document of one group/version, `None` when nothing is served there.
pub fn group_version_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceInfo> = registry
        .resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    // Built-in schemas reference each other freely; include them all (kube-apiserver does too).
    let mut schemas: Map<String, Value> = registry
        .builtin_schemas()
        .definitions
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for r in served {
        let schema_ref = match &r.crd_name {
            None => r.schema.clone().unwrap_or_else(|| json!({})),
            Some(_) => {
                let name = crd_definition_name(r);
                let mut schema = r
                    .schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"}));
                if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert(
                        "metadata".into(),
                        json!({ "allOf": [{ "$ref": format!("#/components/schemas/{OBJECT_META}") }], "default": {} }),
                    );
                    props
                        .entry("apiVersion")
                        .or_insert(json!({"type": "string"}));
                    props.entry("kind").or_insert(json!({"type": "string"}));
                }
                schema["x-kubernetes-group-version-kind"] =
                    json!([{ "group": r.group, "version": r.version, "kind": r.kind }]);
                schemas.insert(name.clone(), schema);
                json!({ "$ref": format!("#/components/schemas/{name}") })
            }
        };
        paths.extend(operations(r, &schema_ref));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": format!("v{}.{}.0", crate::discovery::KUBERNETES_VERSION.0, crate::discovery::KUBERNETES_VERSION.1) },
        "paths": paths,
        "components": { "schemas": schemas },
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crd_documents_carry_the_gvk_and_field_validation() {
        let mut reg = Registry::with_builtins();
        for crd in vmetal_api::crds::all() {
            reg.add_crd(&crd);
        }
        let doc = group_version_document(&reg, "metal3.io", "v1alpha1").unwrap();
        let def = &doc["components"]["schemas"]["io.metal3.v1alpha1.BareMetalHost"];
        assert_eq!(
            def["x-kubernetes-group-version-kind"][0]["kind"],
            "BareMetalHost"
        );
        assert!(def["properties"]["spec"]["properties"]["bootMACAddress"].is_object());
        let post =
            &doc["paths"]["/apis/metal3.io/v1alpha1/namespaces/{namespace}/baremetalhosts"]["post"];
        assert_eq!(post["parameters"][0]["name"], "fieldValidation");
        let idx = index(&reg);
        let url = idx["paths"]["apis/metal3.io/v1alpha1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/metal3.io/v1alpha1?hash="));
    }

    #[test]
    fn references_resolve() {
        let reg = Registry::with_builtins();
        let doc = group_version_document(&reg, "apps", "v1").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {r}");
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    // JSONSchemaProps has a *property* named `$ref`; only string values are refs.
                    if let (true, Some(r)) = (k == "$ref", child.as_str()) {
                        out.push(r.to_string());
                    } else {
                        collect_refs(child, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
            _ => {}
        }
    }
}

//! Discovery documents: `/version`, `/api`, `/apis` and each group/version's resource list,
//! built as plain JSON from the [`Registry`].
//!
//! Only the legacy (unaggregated) forms are served; clients asking for aggregated discovery get
//! `application/json` and fall back, as they do against older API servers.

use serde_json::{Value, json};

use crate::registry::Registry;

/// The Kubernetes version this server emulates.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// `/version`.
pub fn version_info() -> Value {
    json!({
        "major": KUBERNETES_VERSION.0,
        "minor": KUBERNETES_VERSION.1,
        "gitVersion": format!("v{}.{}.0-vmetal.{}", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// `/api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

/// `/apis`: every named group with its versions (preferred = first served).
pub fn api_group_list(registry: &Registry) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (group, version) in registry.group_versions() {
        if group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(version),
            None => groups.push((group, vec![version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let preferred = preferred_version(registry, &group, &versions);
            json!({
                "name": group,
                "versions": versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect::<Vec<_>>(),
                "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred},
            })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn preferred_version(registry: &Registry, group: &str, versions: &[String]) -> String {
    registry
        .resources()
        .iter()
        .find(|r| r.group == group && r.storage)
        .map(|r| r.version.clone())
        .or_else(|| versions.first().cloned())
        .unwrap_or_default()
}

/// `/apis/<group>`: one group.
pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    let list = api_group_list(registry);
    list["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)
        .map(|g| {
            let mut g = g.clone();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        })
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources served there, `None` if not served.
pub fn api_resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let served: Vec<_> = registry
        .resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = served[0].group_version();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_resources_include_crds() {
        let mut reg = Registry::with_builtins();
        for crd in vmetal_api::crds::all() {
            reg.add_crd(&crd);
        }
        let groups = api_group_list(&reg);
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"metal3.io") && names.contains(&"apps"));
        assert!(!names.contains(&""));

        let list = api_resource_list(&reg, "metal3.io", "v1alpha1").unwrap();
        assert_eq!(list["groupVersion"], "metal3.io/v1alpha1");
        let res = list["resources"].as_array().unwrap();
        assert_eq!(res[0]["name"], "baremetalhosts");
        assert_eq!(res[0]["shortNames"], json!(["bmh", "bmhost"]));
        assert_eq!(res[1]["name"], "baremetalhosts/status");
        assert!(api_resource_list(&reg, "nope.io", "v1").is_none());
    }

    #[test]
    fn core_group_lists_secrets() {
        let reg = Registry::with_builtins();
        let list = api_resource_list(&reg, "", "v1").unwrap();
        assert_eq!(list["groupVersion"], "v1");
        assert!(
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "secrets")
        );
    }
}

//! The set of resources the API server serves: Kubernetes built-ins taken from k8s-openapi, plus
//! every CustomResourceDefinition that has been created (all its versions).
//!
//! Discovery, OpenAPI and request routing all read this one table.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::Value;

/// One served resource at one group/version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// API group, `""` for the core group.
    pub group: String,
    /// Version (`v1`, `v1alpha1`).
    pub version: String,
    /// Kind (`Secret`).
    pub kind: String,
    /// Plural resource name used in URLs (`secrets`).
    pub plural: String,
    /// Singular name (`secret`).
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names for kubectl (`bmh`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Whether `/status` is a separate subresource.
    pub status_subresource: bool,
    /// Printer columns for `kubectl get` tables (CRDs only; built-ins get name and age).
    pub printer_columns: Vec<CustomResourceColumnDefinition>,
    /// The OpenAPI v3 schema of the object, with `$ref`s into `components/schemas`.
    pub schema: Option<Value>,
    /// Whether this is the storage version (for CRDs with several versions).
    pub storage: bool,
    /// Name of the CRD that defines it, `None` for built-ins.
    pub crd_name: Option<String>,
}

impl ResourceInfo {
    /// `group/version`, or just `version` for the core group.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// URL prefix of the group/version: `/api/v1` or `/apis/<group>/<version>`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The verbs kubectl may use.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// Scope of a k8s-openapi resource type, known at compile time.
pub trait ScopeKind {
    /// Whether the scope is a namespace.
    const NAMESPACED: bool;
}

impl ScopeKind for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl ScopeKind for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// Schemas of built-in types, keyed by their OpenAPI definition name.
#[derive(Debug, Clone, Default)]
pub struct SchemaBook {
    /// `components/schemas` entries.
    pub definitions: BTreeMap<String, Value>,
}

/// The served resources.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    resources: Vec<ResourceInfo>,
    builtin_schemas: SchemaBook,
}

fn settings() -> SchemaSettings {
    let mut s = SchemaSettings::openapi3();
    s.definitions_path = "#/components/schemas/".into();
    s
}

fn builtin<K>(
    short_names: &[&str],
    categories: &[&str],
    status: bool,
    book: &mut SchemaBook,
) -> ResourceInfo
where
    K: Resource + JsonSchema,
    K::Scope: ScopeKind,
{
    let mut generator = settings().into_generator();
    let top = generator.subschema_for::<K>();
    for (name, def) in generator.take_definitions(true) {
        book.definitions.entry(name).or_insert(def);
    }
    // The top-level schema is a `$ref`; tag its definition with the GVK so kubectl finds it.
    let gvk = serde_json::json!([{ "group": K::GROUP, "version": K::VERSION, "kind": K::KIND }]);
    if let Some(name) = top
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        && let Some(Value::Object(def)) = book.definitions.get_mut(name)
    {
        def.insert("x-kubernetes-group-version-kind".into(), gvk);
    }
    ResourceInfo {
        group: K::GROUP.into(),
        version: K::VERSION.into(),
        kind: K::KIND.into(),
        plural: K::URL_PATH_SEGMENT.into(),
        singular: K::KIND.to_ascii_lowercase(),
        namespaced: <K::Scope as ScopeKind>::NAMESPACED,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status_subresource: status,
        printer_columns: Vec::new(),
        schema: Some(top.to_value()),
        storage: true,
        crd_name: None,
    }
}

/// Give a built-in kind the printer columns `kubectl get` shows for it.
fn with_columns(mut info: ResourceInfo, columns: &[(&str, &str, &str)]) -> ResourceInfo {
    info.printer_columns = columns
        .iter()
        .map(|(name, type_, path)| CustomResourceColumnDefinition {
            name: (*name).into(),
            type_: (*type_).into(),
            json_path: (*path).into(),
            ..Default::default()
        })
        .collect();
    info
}

impl Registry {
    /// The built-in kinds vmetal, kube-rs and kubectl use.
    pub fn with_builtins() -> Self {
        use k8s_openapi::api::{apps, coordination, core, events, rbac};
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
        let mut book = SchemaBook::default();
        let b = &mut book;
        let resources = vec![
            builtin::<core::v1::Namespace>(&["ns"], &[], true, b),
            builtin::<core::v1::Secret>(&[], &[], false, b),
            builtin::<core::v1::ConfigMap>(&["cm"], &[], false, b),
            with_columns(
                builtin::<core::v1::Event>(&["ev"], &[], false, b),
                &[
                    ("Last Seen", "date", ".lastTimestamp"),
                    ("Type", "string", ".type"),
                    ("Reason", "string", ".reason"),
                    ("Object", "string", ".involvedObject.name"),
                    ("Message", "string", ".message"),
                ],
            ),
            builtin::<core::v1::Node>(&["no"], &[], true, b),
            builtin::<core::v1::Service>(&["svc"], &["all"], true, b),
            builtin::<core::v1::ServiceAccount>(&["sa"], &[], false, b),
            builtin::<core::v1::Pod>(&["po"], &["all"], true, b),
            builtin::<events::v1::Event>(&["ev"], &[], false, b),
            builtin::<coordination::v1::Lease>(&[], &[], false, b),
            builtin::<apps::v1::Deployment>(&["deploy"], &["all"], true, b),
            builtin::<apps::v1::DaemonSet>(&["ds"], &["all"], true, b),
            builtin::<apps::v1::StatefulSet>(&["sts"], &["all"], true, b),
            builtin::<rbac::v1::Role>(&[], &[], false, b),
            builtin::<rbac::v1::RoleBinding>(&[], &[], false, b),
            builtin::<rbac::v1::ClusterRole>(&[], &[], false, b),
            builtin::<rbac::v1::ClusterRoleBinding>(&[], &[], false, b),
            builtin::<apiext::CustomResourceDefinition>(&["crd", "crds"], &[], true, b),
        ];
        Self {
            resources,
            builtin_schemas: book,
        }
    }

    /// Serve every version of `crd` (replacing what an earlier version of it served).
    pub fn add_crd(&mut self, crd: &CustomResourceDefinition) {
        let name = crd.metadata.name.clone().unwrap_or_default();
        self.remove_crd(&name);
        let spec = &crd.spec;
        for v in spec.versions.iter().filter(|v| v.served) {
            let schema = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok());
            self.resources.push(ResourceInfo {
                group: spec.group.clone(),
                version: v.name.clone(),
                kind: spec.names.kind.clone(),
                plural: spec.names.plural.clone(),
                singular: spec
                    .names
                    .singular
                    .clone()
                    .unwrap_or_else(|| spec.names.kind.to_ascii_lowercase()),
                namespaced: spec.scope == "Namespaced",
                short_names: spec.names.short_names.clone().unwrap_or_default(),
                categories: spec.names.categories.clone().unwrap_or_default(),
                status_subresource: v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
                printer_columns: v.additional_printer_columns.clone().unwrap_or_default(),
                schema,
                storage: v.storage,
                crd_name: Some(name.clone()),
            });
        }
    }

    /// Stop serving what CRD `name` defined.
    pub fn remove_crd(&mut self, name: &str) {
        self.resources
            .retain(|r| r.crd_name.as_deref() != Some(name));
    }

    /// Every served resource.
    pub fn resources(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// The resource at `group`/`version` with plural `plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Served group/versions, core first, then groups by name, versions in order of appearance.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in &self.resources {
            let gv = (r.group.clone(), r.version.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
        out.sort_by(|a, b| (!a.0.is_empty(), &a.0).cmp(&(!b.0.is_empty(), &b.0)));
        out
    }

    /// Schemas of built-in types (`components/schemas`).
    pub fn builtin_schemas(&self) -> &SchemaBook {
        &self.builtin_schemas
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_scopes_and_schemas() {
        let reg = Registry::with_builtins();
        let ns = reg.find("", "v1", "namespaces").unwrap();
        assert!(!ns.namespaced);
        let secret = reg.find("", "v1", "secrets").unwrap();
        assert!(secret.namespaced);
        let lease = reg.find("coordination.k8s.io", "v1", "leases").unwrap();
        assert_eq!(lease.kind, "Lease");
        let crd_def = reg
            .builtin_schemas()
            .definitions
            .get(
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            )
            .unwrap();
        assert_eq!(
            crd_def["x-kubernetes-group-version-kind"][0]["kind"],
            "CustomResourceDefinition"
        );
    }

    #[test]
    fn crds_are_served_and_removed() {
        let mut reg = Registry::with_builtins();
        for crd in vmetal_api::crds::all() {
            reg.add_crd(&crd);
        }
        let bmh = reg.find("metal3.io", "v1alpha1", "baremetalhosts").unwrap();
        assert!(bmh.namespaced && bmh.status_subresource);
        assert_eq!(bmh.short_names, ["bmh", "bmhost"]);
        assert!(
            reg.group_versions()
                .contains(&("metal3.io".into(), "v1alpha1".into()))
        );
        assert_eq!(reg.group_versions()[0], ("".into(), "v1".into()));
        reg.remove_crd("baremetalhosts.metal3.io");
        assert!(
            reg.find("metal3.io", "v1alpha1", "baremetalhosts")
                .is_none()
        );
    }
}

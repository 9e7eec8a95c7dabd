//! Object semantics: create, get, list, update, patch, delete and deletecollection with the
//! behaviour controllers rely on — uid, timestamps, resourceVersion and generation, optimistic
//! concurrency, the status subresource, finalizers, owner-reference garbage collection, CRD
//! serving and schema validation.
//!
//! Each write decides inside one store transaction, so concurrent writers never interleave.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, InvalidObject, Subject};
use crate::patch::{self, PatchKind};
use crate::registry::{Registry, ResourceInfo};
use crate::store::{self, Op, Store};
use crate::validation;

/// Which object(s) a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub info: ResourceInfo,
    /// Namespace from the URL (`None` for cluster-scoped or all-namespaces requests).
    pub namespace: Option<String>,
    /// Object name from the URL.
    pub name: Option<String>,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
}

impl Target {
    fn subject(&self, name: &str) -> Subject {
        Subject {
            group: self.info.group.clone(),
            resource: self.info.plural.clone(),
            name: name.to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        store::key(
            &self.info.group,
            &self.info.plural,
            self.namespace.as_deref().unwrap_or(""),
            name,
        )
    }

    fn is_status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
}

/// List filters and paging.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Parsed label selector.
    pub label_selector: Option<LabelSelector>,
    /// Field selector terms: (path, equals?, value).
    pub field_selector: Vec<(String, bool, String)>,
    /// Page size.
    pub limit: Option<usize>,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The objects.
    pub items: Vec<Value>,
    /// The store revision the page was read at.
    pub resource_version: u64,
    /// Token for the next page, when there is one.
    pub continue_token: Option<String>,
    /// How many objects the next pages hold.
    pub remaining: Option<usize>,
}

/// Delete options.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `Orphan` keeps dependents (and drops their owner reference); anything else deletes them.
    pub orphan: bool,
    /// Precondition on uid.
    pub uid: Option<String>,
    /// Precondition on resourceVersion.
    pub resource_version: Option<String>,
}

/// The object API over a store and a registry.
#[derive(Clone)]
pub struct Objects {
    store: Arc<Store>,
    registry: Arc<RwLock<Registry>>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).get(field).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let slot = &mut obj["metadata"];
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        // Made an object just above.
        _ => unreachable!("metadata is an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything but metadata (and status, when it is a subresource): what `generation` tracks.
fn spec_part(obj: &Value, status_subresource: bool) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if status_subresource {
            m.remove("status");
        }
    }
    v
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    let _ = getrandom::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn invalid(target: &Target, name: &str, field: &str, reason: &str, detail: String) -> ApiError {
    let message = format!(
        "{}.{} \"{}\" is invalid: {field}: {detail}",
        target.info.kind, target.info.group, name
    );
    ApiError::Invalid(Box::new(InvalidObject {
        subject: target.subject(name),
        kind: target.info.kind.clone(),
        message,
        causes: vec![json!({"reason": reason, "message": detail, "field": field})],
    }))
}

/// Does `obj` match the list filters?
pub fn matches(obj: &Value, opts: &ListOptions) -> bool {
    if let Some(sel) = &opts.label_selector
        && !vmetal_api::selector::selector_matches(sel, &labels(obj)).unwrap_or(false)
    {
        return false;
    }
    opts.field_selector.iter().all(|(path, equals, want)| {
        let mut cur = obj;
        for part in path.split('.') {
            cur = cur.get(part).unwrap_or(&Value::Null);
        }
        let have = match cur {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        (have == *want) == *equals
    })
}

impl Objects {
    /// The API over `store`, serving what `registry` lists.
    pub fn new(store: Arc<Store>, registry: Arc<RwLock<Registry>>) -> Self {
        let objects = Self { store, registry };
        objects.serve_stored_crds();
        objects
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<RwLock<Registry>> {
        &self.registry
    }

    fn registry_write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve the CRDs found in the store (after a restart).
    fn serve_stored_crds(&self) {
        let (items, _) = self.store.list(&store::prefix(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
        ));
        let mut reg = self.registry_write();
        for (_, v) in items {
            if let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(v) {
                reg.add_crd(&crd);
            }
        }
    }

    /// Make sure the standard namespaces exist.
    pub fn ensure_namespaces(&self, names: &[&str]) -> Result<(), ApiError> {
        let Some(info) = self.find("", "v1", "namespaces") else {
            return Ok(());
        };
        for ns in names {
            let target = Target {
                info: info.clone(),
                namespace: None,
                name: None,
                subresource: None,
            };
            match self.create(&target, json!({"metadata": {"name": ns}}), false) {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Look up a served resource.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(group, version, plural)
            .cloned()
    }

    fn check_type(target: &Target, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON or YAML object".into(),
            ));
        }
        let want_av = target.info.group_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = json!(want_av),
            Some(av) if av == want_av => {}
            Some(av) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(target.info.kind),
            Some(k) if k == target.info.kind => {}
            Some(k) => {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    target.info.kind
                )));
            }
        }
        Ok(())
    }

    fn check_namespace(&self, target: &Target, obj: &mut Value) -> Result<(), ApiError> {
        if !target.info.namespaced {
            meta_mut(obj).remove("namespace");
            return Ok(());
        }
        let url_ns = target.namespace.clone().unwrap_or_default();
        match meta_str(obj, "namespace") {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            _ => {
                meta_mut(obj).insert("namespace".into(), json!(url_ns));
            }
        }
        if self
            .store
            .get(&store::key("", "namespaces", "", &url_ns))
            .is_none()
        {
            return Err(ApiError::NotFound(Subject {
                group: String::new(),
                resource: "namespaces".into(),
                name: url_ns,
            }));
        }
        Ok(())
    }

    fn validate(&self, target: &Target, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        if target.info.crd_name.is_none() {
            return Ok(());
        }
        let Some(schema) = &target.info.schema else {
            return Ok(());
        };
        validation::validate_and_default(schema, obj).map_err(|errors| {
            ApiError::Invalid(Box::new(InvalidObject {
                subject: target.subject(name),
                kind: target.info.kind.clone(),
                message: validation::status_message(
                    &format!("{}.{}", target.info.kind, target.info.group),
                    name,
                    &errors,
                ),
                causes: validation::status_causes(&errors),
            }))
        })
    }

    /// Create an object.
    pub fn create(
        &self,
        target: &Target,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(target, &mut obj)?;
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(invalid(
                        target,
                        "",
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required".into(),
                    ));
                }
            },
        };
        if !is_dns_subdomain(&name) {
            return Err(invalid(
                target,
                &name,
                "metadata.name",
                "FieldValueInvalid",
                format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if let Some(url_name) = &target.name
            && *url_name != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({name}) does not match the name on the URL ({url_name})"
            )));
        }
        self.check_namespace(target, &mut obj)?;
        if target.info.status_subresource
            && target.info.crd_name.is_some()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.validate(target, &name, &mut obj)?;
        let is_crd = target.info.group == "apiextensions.k8s.io"
            && target.info.plural == "customresourcedefinitions";
        if is_crd {
            accept_crd(target, &name, &mut obj)?;
        }
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now()));
            m.insert("generation".into(), json!(1));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        if dry_run {
            return Ok(obj);
        }
        let key = Target {
            namespace: meta_str(&obj, "namespace").map(String::from),
            ..target.clone()
        }
        .key(&name);
        let subject = target.subject(&name);
        let written = self.store.write(|objects| {
            if objects.contains_key(&key) {
                return Err(ApiError::AlreadyExists(subject));
            }
            Ok(vec![Op::Put {
                key: key.clone(),
                object: obj,
            }])
        })?;
        let created = written.into_iter().next().unwrap_or(Value::Null);
        if is_crd
            && let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(created.clone())
        {
            self.registry_write().add_crd(&crd);
        }
        Ok(created)
    }

    /// Get one object.
    pub fn get(&self, target: &Target) -> Result<Value, ApiError> {
        let name = target.name.clone().unwrap_or_default();
        self.store
            .get(&target.key(&name))
            .ok_or_else(|| ApiError::NotFound(target.subject(&name)))
    }

    /// List objects, one page at a time.
    pub fn list(&self, target: &Target, opts: &ListOptions) -> Result<ListPage, ApiError> {
        let prefix = store::prefix(
            &target.info.group,
            &target.info.plural,
            target.namespace.as_deref(),
        );
        let (items, rev) = self.store.list(&prefix);
        let start_after = match &opts.continue_token {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let mut matching = items
            .into_iter()
            .filter(|(k, _)| start_after.as_ref().is_none_or(|after| k > after))
            .filter(|(_, v)| matches(v, opts));
        let mut page = Vec::new();
        let mut last_key = None;
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        for (k, v) in matching.by_ref() {
            if page.len() == limit {
                // One more exists: hand out a continue token.
                let remaining = 1 + matching.count();
                let token = last_key.map(|k: String| encode_continue(&k));
                return Ok(ListPage {
                    items: page,
                    resource_version: rev,
                    continue_token: token,
                    remaining: Some(remaining),
                });
            }
            last_key = Some(k);
            page.push(v);
        }
        Ok(ListPage {
            items: page,
            resource_version: rev,
            continue_token: None,
            remaining: None,
        })
    }

    /// Replace an object (or its status).
    pub fn update(
        &self,
        target: &Target,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(target, &mut obj)?;
        let name = target.name.clone().unwrap_or_default();
        match meta_str(&obj, "name") {
            Some(n) if n != name => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        let body_rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
        if body_rv.is_empty() && target.info.crd_name.is_some() {
            return Err(invalid(
                target,
                &name,
                "metadata.resourceVersion",
                "FieldValueInvalid",
                "Invalid value: 0x0: must be specified for an update".into(),
            ));
        }
        self.replace(
            target,
            &name,
            obj,
            Some(body_rv).filter(|s| !s.is_empty()),
            dry_run,
        )
    }

    /// Apply a PATCH body.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        target: &Target,
        kind: PatchKind,
        body: &[u8],
        field_manager: Option<&str>,
        force: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let name = target.name.clone().unwrap_or_default();
        let current = self.store.get(&target.key(&name));
        if current.is_none() && kind != PatchKind::Apply {
            return Err(ApiError::NotFound(target.subject(&name)));
        }
        let patched = patch::apply_patch(kind, current.as_ref(), body, field_manager, force)
            .map_err(|e| patch_error(target, &name, e))?;
        match current {
            None => {
                let create_target = Target {
                    name: Some(name),
                    subresource: None,
                    ..target.clone()
                };
                self.create(&create_target, patched, dry_run)
            }
            Some(cur) => {
                let cur_rv = meta_str(&cur, "resourceVersion").unwrap_or("").to_string();
                // A patch that sets resourceVersion makes it a precondition; otherwise it is
                // applied to whatever is current.
                let precondition = meta_str(&patched, "resourceVersion")
                    .filter(|rv| *rv != cur_rv)
                    .map(String::from);
                let mut obj = patched;
                let _ = Self::check_type(target, &mut obj);
                let rv = precondition.unwrap_or(cur_rv);
                self.replace(target, &name, obj, Some(rv), dry_run)
            }
        }
    }

    fn replace(
        &self,
        target: &Target,
        name: &str,
        body: Value,
        expected_rv: Option<String>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = target.key(name);
        let subject = target.subject(name);
        let status_sub = target.info.status_subresource;
        let is_status = target.is_status();
        let mut result = None;
        let mut crd_changed = None;
        let written = self.store.write(|objects| {
            let Some(current) = objects.get(&key) else {
                return Err(ApiError::NotFound(subject.clone()));
            };
            let cur_rv = meta_str(current, "resourceVersion").unwrap_or("");
            if let Some(rv) = &expected_rv
                && rv != cur_rv
            {
                return Err(ApiError::Conflict {
                    subject: subject.clone(),
                    message: "the object has been modified; please apply your changes to the latest version and try again".into(),
                });
            }
            let mut new = if is_status {
                let mut n = current.clone();
                match body.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                n
            } else {
                let mut n = body.clone();
                if status_sub && let Some(m) = n.as_object_mut() {
                    match current.get("status") {
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.remove("status");
                        }
                    }
                }
                n
            };
            // Immutable metadata comes from the stored object.
            {
                let cur_meta = meta(current).clone();
                let m = meta_mut(&mut new);
                for field in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
                    match cur_meta.get(field) {
                        Some(v) => {
                            m.insert(field.into(), v.clone());
                        }
                        None => {
                            m.remove(field);
                        }
                    }
                }
                if is_status {
                    m.clear();
                    if let Some(cm) = cur_meta.as_object() {
                        m.extend(cm.clone());
                    }
                }
                let generation = cur_meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
                m.insert("generation".into(), json!(generation));
                m.insert("resourceVersion".into(), json!(cur_rv));
            }
            if !is_status {
                self.validate(target, name, &mut new)?;
            }
            if spec_part(&new, status_sub) != spec_part(current, status_sub) {
                let g = meta(current).get("generation").and_then(Value::as_i64).unwrap_or(1);
                meta_mut(&mut new).insert("generation".into(), json!(g + 1));
            }
            if new == *current {
                result = Some(current.clone());
                return Ok(Vec::new());
            }
            if dry_run {
                result = Some(new);
                return Ok(Vec::new());
            }
            let deleting = meta(&new).get("deletionTimestamp").is_some_and(|v| !v.is_null());
            if deleting && finalizers(&new).is_empty() {
                // The last finalizer is gone: the object goes away now.
                let mut ops = vec![Op::Delete { key: key.clone() }];
                ops.extend(dependents_ops(objects, &new, false));
                result = Some(new);
                return Ok(ops);
            }
            if target.info.plural == "customresourcedefinitions" {
                crd_changed = Some(new.clone());
            }
            Ok(vec![Op::Put { key: key.clone(), object: new }])
        })?;
        if let Some(crd) =
            crd_changed.and_then(|v| serde_json::from_value::<CustomResourceDefinition>(v).ok())
        {
            self.registry_write().add_crd(&crd);
        }
        match written.into_iter().next() {
            Some(w) => Ok(w),
            None => result.ok_or_else(|| ApiError::Internal("update produced nothing".into())),
        }
    }

    /// Delete one object. `Ok(Some(obj))` when finalizers hold it (marked for deletion),
    /// `Ok(None)` when it is gone.
    pub fn delete(
        &self,
        target: &Target,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<(Option<Value>, Value), ApiError> {
        let name = target.name.clone().unwrap_or_default();
        let key = target.key(&name);
        let subject = target.subject(&name);
        let mut outcome = None;
        let is_crd = target.info.plural == "customresourcedefinitions";
        let written = self.store.write(|objects| {
            let Some(current) = objects.get(&key) else {
                return Err(ApiError::NotFound(subject.clone()));
            };
            if let Some(uid) = &opts.uid
                && meta_str(current, "uid") != Some(uid.as_str())
            {
                return Err(ApiError::Conflict {
                    subject: subject.clone(),
                    message: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(current, "uid").unwrap_or("")),
                });
            }
            if let Some(rv) = &opts.resource_version
                && meta_str(current, "resourceVersion") != Some(rv.as_str())
            {
                return Err(ApiError::Conflict {
                    subject: subject.clone(),
                    message: format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta_str(current, "resourceVersion").unwrap_or("")),
                });
            }
            if !finalizers(current).is_empty() {
                if meta(current).get("deletionTimestamp").is_some_and(|v| !v.is_null()) {
                    outcome = Some((Some(current.clone()), current.clone()));
                    return Ok(Vec::new());
                }
                let mut marked = current.clone();
                let m = meta_mut(&mut marked);
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if dry_run {
                    outcome = Some((Some(marked.clone()), marked));
                    return Ok(Vec::new());
                }
                return Ok(vec![Op::Put { key: key.clone(), object: marked }]);
            }
            outcome = Some((None, current.clone()));
            if dry_run {
                return Ok(Vec::new());
            }
            let mut ops = vec![Op::Delete { key: key.clone() }];
            ops.extend(dependents_ops(objects, current, opts.orphan));
            if is_crd {
                ops.extend(crd_objects_ops(objects, current));
            }
            if target.info.plural == "namespaces" && target.info.group.is_empty() {
                let prefix_ns = format!("/{name}/");
                ops.extend(
                    objects
                        .keys()
                        .filter(|k| {
                            k.splitn(3, '/').nth(2).is_some_and(|rest| format!("/{rest}").starts_with(&prefix_ns))
                        })
                        .map(|k| Op::Delete { key: k.clone() }),
                );
            }
            Ok(ops)
        })?;
        if let Some(first) = written.into_iter().next()
            && meta(&first)
                .get("deletionTimestamp")
                .is_some_and(|v| !v.is_null())
            && !finalizers(&first).is_empty()
        {
            return Ok((Some(first.clone()), first));
        }
        if is_crd && !dry_run {
            self.registry_write().remove_crd(&name);
        }
        outcome.ok_or_else(|| ApiError::Internal("delete produced nothing".into()))
    }

    /// Delete every object matching `opts` in the target's scope.
    pub fn delete_collection(
        &self,
        target: &Target,
        opts: &ListOptions,
        del: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let items = self
            .list(
                target,
                &ListOptions {
                    limit: None,
                    continue_token: None,
                    ..opts.clone()
                },
            )?
            .items;
        let mut deleted = Vec::new();
        for item in items {
            let t = Target {
                namespace: meta_str(&item, "namespace").map(String::from),
                name: meta_str(&item, "name").map(String::from),
                subresource: None,
                ..target.clone()
            };
            match self.delete(&t, del, dry_run) {
                Ok((_, obj)) => deleted.push(obj),
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

/// Owner-reference garbage collection: dependents of `owner` are deleted (or, when orphaning,
/// lose their owner reference). Dependents with finalizers are marked instead of removed.
fn dependents_ops(objects: &BTreeMap<String, Value>, owner: &Value, orphan: bool) -> Vec<Op> {
    let Some(uid) = meta_str(owner, "uid") else {
        return Vec::new();
    };
    let mut ops = Vec::new();
    for (key, obj) in objects {
        let Some(refs) = meta(obj).get("ownerReferences").and_then(Value::as_array) else {
            continue;
        };
        if !refs
            .iter()
            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        {
            continue;
        }
        let remaining: Vec<Value> = refs
            .iter()
            .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
            .cloned()
            .collect();
        if orphan || !remaining.is_empty() {
            let mut o = obj.clone();
            meta_mut(&mut o).insert("ownerReferences".into(), json!(remaining));
            ops.push(Op::Put {
                key: key.clone(),
                object: o,
            });
        } else if !finalizers(obj).is_empty() {
            let mut o = obj.clone();
            meta_mut(&mut o).insert("deletionTimestamp".into(), json!(now()));
            ops.push(Op::Put {
                key: key.clone(),
                object: o,
            });
        } else {
            ops.push(Op::Delete { key: key.clone() });
        }
    }
    ops
}

fn crd_objects_ops(objects: &BTreeMap<String, Value>, crd: &Value) -> Vec<Op> {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let prefix = store::prefix(group, plural, None);
    objects
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .map(|k| Op::Delete { key: k.clone() })
        .collect()
}

/// Check a CRD's names and mark it accepted and established.
fn accept_crd(target: &Target, name: &str, obj: &mut Value) -> Result<(), ApiError> {
    let crd: CustomResourceDefinition = serde_json::from_value(obj.clone()).map_err(|e| {
        invalid(
            target,
            name,
            "spec",
            "FieldValueInvalid",
            format!("Invalid value: {e}"),
        )
    })?;
    let expected = format!("{}.{}", crd.spec.names.plural, crd.spec.group);
    if name != expected {
        return Err(invalid(
            target,
            name,
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if !crd.spec.versions.iter().any(|v| v.storage) {
        return Err(invalid(
            target,
            name,
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    let t = now();
    obj["status"] = json!({
        "acceptedNames": obj["spec"]["names"].clone(),
        "storedVersions": crd.spec.versions.iter().filter(|v| v.storage).map(|v| v.name.clone()).collect::<Vec<_>>(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
    });
    Ok(())
}

fn patch_error(target: &Target, name: &str, e: patch::PatchError) -> ApiError {
    match e {
        patch::PatchError::Conflict { .. } => ApiError::Conflict {
            subject: target.subject(name),
            message: e.to_string(),
        },
        patch::PatchError::UnsupportedMediaType { .. } => ApiError::UnsupportedMediaType(
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".into(),
        ),
        patch::PatchError::FieldManagerRequired => invalid(
            target,
            name,
            "fieldManager",
            "FieldValueRequired",
            "Required value: is required for apply patch".into(),
        ),
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn encode_continue(last_key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_key.as_bytes())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::BadRequest(format!("invalid continue token {token:?}")))
}

//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge patch
//! (simplified) and server-side apply, computed on JSON values without I/O.
//!
//! What is supported, and where it differs from kube-apiserver:
//!
//! - `application/json-patch+json`: all six operations; a failed `test` (or any failed
//!   operation) rejects the whole patch with the index of the operation.
//! - `application/merge-patch+json`: RFC 7386 exactly (`null` deletes, maps merge, anything else
//!   replaces); the body must be a JSON object.
//! - `application/strategic-merge-patch+json`: a merge patch in which **lists are always
//!   replaced** — there is no `patchMergeKey` merging of lists (so a partial `containers` list
//!   replaces the whole list). Directives understood: `$patch: delete` and `$patch: replace` on
//!   a map, `$retainKeys`, `$deleteFromPrimitiveList/<field>`; `$setElementOrder/<field>` and
//!   `$patch` elements inside lists are dropped. For our CRD kinds (which kube itself patches
//!   only with merge patches) this is exact.
//! - `application/apply-patch+yaml` (and `+json`): server-side apply "good enough" for kube-rs
//!   `Patch::Apply` and `kubectl apply --server-side`. The applied configuration is deep-merged
//!   into the live object (maps merged, lists replaced atomically), ownership is recorded per
//!   manager in `metadata.managedFields` as leaf paths (`FieldsV1`), fields a manager stops
//!   applying are removed when nobody else owns them, and changing a field another manager owns
//!   is a conflict unless `force`. The entry carries no `time`: the handler may stamp it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Metadata fields that belong to the server, never to a field manager.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The content types kube-apiserver accepts for PATCH, in the order it lists them.
pub const SUPPORTED_CONTENT_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

/// Which kind of patch a request body is, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902 JSON patch (`application/json-patch+json`).
    Json,
    /// RFC 7386 JSON merge patch (`application/merge-patch+json`).
    Merge,
    /// Strategic merge patch, as a merge patch with list replacement
    /// (`application/strategic-merge-patch+json`).
    StrategicMerge,
    /// Server-side apply (`application/apply-patch+yaml`).
    Apply,
}

impl PatchKind {
    /// The patch kind of a `Content-Type` header value, ignoring parameters such as `charset`.
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media_type.as_str() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }

    /// The canonical content type of this patch kind.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json-patch+json",
            Self::Merge => "application/merge-patch+json",
            Self::StrategicMerge => "application/strategic-merge-patch+json",
            Self::Apply => "application/apply-patch+yaml",
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The `Content-Type` is not one of [`SUPPORTED_CONTENT_TYPES`] (415).
    #[error(
        "the patch content type {content_type:?} is not supported; use one of {SUPPORTED_CONTENT_TYPES}"
    )]
    UnsupportedMediaType {
        /// The `Content-Type` as sent.
        content_type: String,
    },
    /// The body does not parse, or has the wrong shape for its patch kind (400).
    #[error("error decoding patch: {reason}")]
    MalformedBody {
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON patch operation failed, e.g. a `test` did not match or a path does not exist.
    #[error("the JSON patch operation at index {op_index} failed: {reason}")]
    JsonPatchFailed {
        /// Zero-based index of the failing operation in the patch array.
        op_index: usize,
        /// What went wrong.
        reason: String,
    },
    /// Server-side apply needs `?fieldManager=` (422 in kube-apiserver).
    #[error(
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    )]
    FieldManagerRequired,
    /// Apply would change fields another manager owns; retry with `force=true` to take them (409).
    #[error("{}", conflict_message(manager, api_version, fields))]
    Conflict {
        /// The manager(s) owning the fields, comma-separated when several.
        manager: String,
        /// The applied object's `apiVersion`, as the message names it.
        api_version: String,
        /// The conflicting fields, as `.spec.online`.
        fields: Vec<String>,
    },
    /// A JSON, merge or strategic merge patch of an object that does not exist (404).
    #[error("the object to patch does not exist; only server-side apply creates objects")]
    NotFoundForPatch,
}

fn conflict_message(manager: &str, api_version: &str, fields: &[String]) -> String {
    match fields {
        [one] => format!(
            "Apply failed with 1 conflict: conflict with \"{manager}\" using {api_version}: {one}"
        ),
        many => {
            let mut message = format!(
                "Apply failed with {} conflicts: conflicts with \"{manager}\" using {api_version}:",
                many.len()
            );
            for field in many {
                message.push_str("\n- ");
                message.push_str(field);
            }
            message
        }
    }
}

/// The patch kind of a `Content-Type`, or [`PatchError::UnsupportedMediaType`].
pub fn patch_kind(content_type: &str) -> Result<PatchKind, PatchError> {
    PatchKind::from_content_type(content_type).ok_or_else(|| PatchError::UnsupportedMediaType {
        content_type: content_type.to_string(),
    })
}

/// Apply a PATCH `body` of `kind` to `current` (the live object, `None` when it does not
/// exist) and return the new object. Only [`PatchKind::Apply`] creates a missing object;
/// `field_manager` and `force` are used by apply only.
pub fn apply_patch(
    kind: PatchKind,
    current: Option<&Value>,
    body: &[u8],
    field_manager: Option<&str>,
    force: bool,
) -> Result<Value, PatchError> {
    match kind {
        PatchKind::Apply => {
            let manager = field_manager
                .filter(|manager| !manager.is_empty())
                .ok_or(PatchError::FieldManagerRequired)?;
            let applied = parse_yaml_object(body)?;
            server_side_apply(current, applied, manager, force)
        }
        PatchKind::Json => {
            let current = current.ok_or(PatchError::NotFoundForPatch)?;
            let operations: Value = parse_json(body)?;
            json_patch(current, &operations)
        }
        PatchKind::Merge => {
            let current = current.ok_or(PatchError::NotFoundForPatch)?;
            let patch = parse_json_object(body)?;
            let mut result = current.clone();
            merge_patch(&mut result, &patch);
            Ok(result)
        }
        PatchKind::StrategicMerge => {
            let current = current.ok_or(PatchError::NotFoundForPatch)?;
            let patch = parse_json_object(body)?;
            let mut result = current.clone();
            match strategic_merge(&mut result, &patch) {
                Merged::Keep => Ok(result),
                Merged::Delete => Err(PatchError::MalformedBody {
                    reason: "`$patch: delete` cannot delete the whole object".to_string(),
                }),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// body parsing

fn parse_json(body: &[u8]) -> Result<Value, PatchError> {
    serde_json::from_slice(body).map_err(|error| PatchError::MalformedBody {
        reason: error.to_string(),
    })
}

fn parse_json_object(body: &[u8]) -> Result<Value, PatchError> {
    let value = parse_json(body)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(PatchError::MalformedBody {
            reason: format!(
                "a merge patch must be a JSON object, not {}",
                type_name(&value)
            ),
        })
    }
}

/// An apply body: one YAML (or JSON, which is YAML) document holding an object with
/// `apiVersion` and `kind`.
fn parse_yaml_object(body: &[u8]) -> Result<Value, PatchError> {
    // kube-rs sends JSON: parse it as JSON first (exact numbers), YAML otherwise.
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => serde_yaml::from_slice(body).map_err(|error| PatchError::MalformedBody {
            reason: error.to_string(),
        })?,
    };
    let Value::Object(map) = &value else {
        return Err(PatchError::MalformedBody {
            reason: format!(
                "an apply patch must be an object, not {}",
                type_name(&value)
            ),
        });
    };
    for field in ["apiVersion", "kind"] {
        let text = map.get(field).and_then(Value::as_str);
        if text.is_none_or(str::is_empty) {
            return Err(PatchError::MalformedBody {
                reason: format!("an apply patch must set `{field}`"),
            });
        }
    }
    Ok(value)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 7386 merge patch and the strategic variant

/// RFC 7386: merge `patch` into `target` (`null` deletes a key, objects merge, others replace).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// What a strategic merge asks of the map it was applied to.
#[derive(Debug, PartialEq)]
enum Merged {
    Keep,
    Delete,
}

fn strategic_merge(target: &mut Value, patch: &Value) -> Merged {
    let Value::Object(patch) = patch else {
        *target = strip_directives(patch);
        return Merged::Keep;
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Merged::Delete,
        Some("replace") => {
            *target = strip_directives(&Value::Object(patch.clone()));
            return Merged::Keep;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return Merged::Keep;
    };
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        target.retain(|key, _| retain.iter().any(|kept| kept.as_str() == Some(key)));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), value)
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue; // $patch, $retainKeys, $setElementOrder/...: handled above or irrelevant
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(_) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                if strategic_merge(slot, value) == Merged::Delete {
                    target.remove(key);
                }
            }
            other => {
                target.insert(key.clone(), strip_directives(other));
            }
        }
    }
    Merged::Keep
}

/// A patch value as data: `$` directive keys removed, `{"$patch": ...}` list elements dropped.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| !key.starts_with('$'))
                .map(|(key, value)| (key.clone(), strip_directives(value)))
                .collect(),
        ),
        Value::Array(list) => Value::Array(
            list.iter()
                .filter(|item| item.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 6902 JSON patch

/// RFC 6902: apply the operations array `operations` to a copy of `document`; all or nothing.
pub fn json_patch(document: &Value, operations: &Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = operations else {
        return Err(PatchError::MalformedBody {
            reason: format!(
                "a JSON patch must be an array, not {}",
                type_name(operations)
            ),
        });
    };
    let mut result = document.clone();
    for (op_index, operation) in operations.iter().enumerate() {
        apply_operation(&mut result, operation)
            .map_err(|reason| PatchError::JsonPatchFailed { op_index, reason })?;
    }
    Ok(result)
}

fn apply_operation(document: &mut Value, operation: &Value) -> Result<(), String> {
    let field = |name: &str| operation.get(name);
    let text = |name: &str| -> Result<&str, String> {
        field(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing or non-string \"{name}\""))
    };
    let op = text("op")?;
    let path = parse_pointer(text("path")?)?;
    let value = || {
        field("value")
            .cloned()
            .ok_or_else(|| format!("\"{op}\" needs a \"value\""))
    };
    match op {
        "add" => add(document, &path, value()?),
        "remove" => remove(document, &path).map(|_removed| ()),
        "replace" => {
            let slot = pointer_mut(document, &path)?;
            *slot = value()?;
            Ok(())
        }
        "move" => {
            let from = parse_pointer(text("from")?)?;
            if path.len() > from.len() && path[..from.len()] == from[..] {
                return Err("cannot move a value into one of its own children".to_string());
            }
            let moved = remove(document, &from)?;
            add(document, &path, moved)
        }
        "copy" => {
            let from = parse_pointer(text("from")?)?;
            let copied = pointer_mut(document, &from)?.clone();
            add(document, &path, copied)
        }
        "test" => {
            let expected = value()?;
            let actual = pointer_mut(document, &path)?;
            if json_equal(actual, &expected) {
                Ok(())
            } else {
                Err(format!(
                    "test failed: {} is {actual}, not {expected}",
                    display_pointer(&path)
                ))
            }
        }
        other => Err(format!("unknown operation \"{other}\"")),
    }
}

fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("path \"{pointer}\" must start with '/'"));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("path \"{pointer}\" has an invalid '~' escape")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

fn display_pointer(path: &[String]) -> String {
    path.iter()
        .map(|token| format!("/{}", token.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// An array index token: digits without leading zeros, within `limit` (inclusive).
fn array_index(token: &str, limit: usize) -> Result<usize, String> {
    let valid = !token.is_empty()
        && token.chars().all(|c| c.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let index = if valid {
        token.parse::<usize>().ok()
    } else {
        None
    };
    match index {
        Some(index) if index <= limit => Ok(index),
        Some(index) => Err(format!("array index {index} is out of bounds")),
        None => Err(format!("\"{token}\" is not an array index")),
    }
}

fn pointer_mut<'a>(document: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut current = document;
    for (depth, token) in path.iter().enumerate() {
        current = match current {
            Value::Object(map) => map.get_mut(token),
            Value::Array(list) => {
                let limit = list.len().saturating_sub(1);
                if list.is_empty() {
                    None
                } else {
                    list.get_mut(array_index(token, limit)?)
                }
            }
            _ => None,
        }
        .ok_or_else(|| format!("{} does not exist", display_pointer(&path[..=depth])))?;
    }
    Ok(current)
}

fn add(document: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent_path)) = path.split_last() else {
        *document = value;
        return Ok(());
    };
    match pointer_mut(document, parent_path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(list) => {
            let index = if last == "-" {
                list.len()
            } else {
                array_index(last, list.len())?
            };
            list.insert(index, value);
            Ok(())
        }
        _ => Err(format!(
            "{} is not an object or array",
            display_pointer(parent_path)
        )),
    }
}

fn remove(document: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, parent_path)) = path.split_last() else {
        return Err("cannot remove the whole document".to_string());
    };
    let missing = || format!("{} does not exist", display_pointer(path));
    match pointer_mut(document, parent_path)? {
        Value::Object(map) => map.remove(last).ok_or_else(missing),
        Value::Array(list) if !list.is_empty() => {
            let index = array_index(last, list.len() - 1)?;
            Ok(list.remove(index))
        }
        _ => Err(missing()),
    }
}

/// JSON equality where `1` and `1.0` are equal (RFC 6902 compares numbers by value).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, xv)| y.get(key).is_some_and(|yv| json_equal(xv, yv)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// server-side apply

/// A field path as segments (`["spec", "bmc", "address"]`).
type FieldPath = Vec<String>;

fn server_side_apply(
    current: Option<&Value>,
    mut applied: Value,
    manager: &str,
    force: bool,
) -> Result<Value, PatchError> {
    if let Some(metadata) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut applied_fields = Vec::new();
    collect_fields(&applied, &mut Vec::new(), &mut applied_fields);

    let Some(current) = current else {
        let entry = apply_entry(manager, &api_version, &applied_fields);
        set_managed_fields(&mut applied, vec![entry]);
        return Ok(applied);
    };

    let mut entries = managed_entries(current);
    let mine = entries
        .iter()
        .position(|entry| entry.manager == manager && entry.operation == "Apply");
    let previously_applied = mine.map(|index| entries[index].fields.clone());

    let mut merged = current.clone();
    deep_merge(&mut merged, &applied);

    // Fields this manager applied before but not now are removed, unless someone else (or the
    // new configuration) still has a claim on them.
    if let Some(previous) = previously_applied {
        for path in previous {
            let still_claimed = overlaps_any(&path, &applied_fields)
                || entries
                    .iter()
                    .filter(|entry| !(entry.manager == manager && entry.operation == "Apply"))
                    .any(|entry| overlaps_any(&path, &entry.fields));
            if !still_claimed {
                remove_path(&mut merged, &path);
            }
        }
    }

    // A conflict is a field another manager owns whose value this apply changes.
    let mut conflicts: Vec<(usize, FieldPath)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.manager == manager {
            continue;
        }
        for path in &entry.fields {
            if overlaps_any(path, &applied_fields)
                && !values_equal(get_path(current, path), get_path(&merged, path))
            {
                conflicts.push((index, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            let mut managers: Vec<&str> = Vec::new();
            for (index, _) in &conflicts {
                let name = entries[*index].manager.as_str();
                if !managers.contains(&name) {
                    managers.push(name);
                }
            }
            return Err(PatchError::Conflict {
                manager: managers.join(", "),
                api_version,
                fields: conflicts
                    .iter()
                    .map(|(_, path)| format!(".{}", path.join(".")))
                    .collect(),
            });
        }
        for (index, path) in &conflicts {
            entries[*index].fields.retain(|owned| owned != path);
        }
    }

    let mut result_entries: Vec<Value> = Vec::new();
    let mut placed = false;
    for (index, entry) in entries.into_iter().enumerate() {
        if Some(index) == mine {
            result_entries.push(apply_entry(manager, &api_version, &applied_fields));
            placed = true;
        } else if !entry.fields.is_empty() {
            result_entries.push(entry.with_fields());
        }
    }
    if !placed {
        result_entries.push(apply_entry(manager, &api_version, &applied_fields));
    }
    set_managed_fields(&mut merged, result_entries);
    Ok(merged)
}

/// One `metadata.managedFields` entry, with its ownership as leaf paths.
struct ManagedEntry {
    raw: Value,
    manager: String,
    operation: String,
    fields: Vec<FieldPath>,
}

impl ManagedEntry {
    /// The original entry with `fieldsV1` rewritten from `fields` (after a forced takeover).
    fn with_fields(mut self) -> Value {
        if let Value::Object(map) = &mut self.raw {
            map.insert("fieldsV1".to_string(), fields_v1(&self.fields));
        }
        self.raw
    }
}

fn managed_entries(object: &Value) -> Vec<ManagedEntry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| entry.is_object())
                .map(|entry| {
                    let mut fields = Vec::new();
                    if let Some(set) = entry.get("fieldsV1") {
                        parse_fields_v1(set, &mut Vec::new(), &mut fields);
                    }
                    let text = |name: &str| {
                        entry
                            .get(name)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    ManagedEntry {
                        raw: entry.clone(),
                        manager: text("manager"),
                        operation: text("operation"),
                        fields,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn apply_entry(manager: &str, api_version: &str, fields: &[FieldPath]) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(fields),
    })
}

fn set_managed_fields(object: &mut Value, entries: Vec<Value>) {
    if let Value::Object(map) = object {
        let metadata = map
            .entry("metadata".to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(metadata) = metadata {
            metadata.insert("managedFields".to_string(), Value::Array(entries));
        }
    }
}

/// The leaf paths an applied configuration sets: scalars, lists (atomic) and empty maps.
fn collect_fields(value: &Value, path: &mut FieldPath, out: &mut Vec<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let skip = match path.as_slice() {
                    [] => key == "apiVersion" || key == "kind",
                    [only] if only == "metadata" => SERVER_METADATA.contains(&key.as_str()),
                    _ => false,
                };
                if skip {
                    continue;
                }
                path.push(key.clone());
                collect_fields(child, path, out);
                path.pop();
            }
        }
        _ if path.is_empty() => {}
        _ => out.push(path.clone()),
    }
}

/// Read a `FieldsV1` set: `f:<name>` children, `.` for the node itself; list-item keys
/// (`k:`, `v:`, `i:`) from real servers make the whole list owned, as we treat lists atomically.
fn parse_fields_v1(set: &Value, path: &mut FieldPath, out: &mut Vec<FieldPath>) {
    let Value::Object(map) = set else {
        return;
    };
    if map.is_empty() && !path.is_empty() {
        out.push(path.clone());
        return;
    }
    let mut list_owned = false;
    for (key, child) in map {
        if key == "." {
            if !path.is_empty() {
                out.push(path.clone());
            }
        } else if let Some(name) = key.strip_prefix("f:") {
            path.push(name.to_string());
            parse_fields_v1(child, path, out);
            path.pop();
        } else if !list_owned && !path.is_empty() {
            list_owned = true;
            out.push(path.clone());
        }
    }
}

/// Write leaf paths as a `FieldsV1` set (`{"f:spec":{"f:online":{}}}`).
fn fields_v1(fields: &[FieldPath]) -> Value {
    #[derive(Default)]
    struct Node {
        leaf: bool,
        children: BTreeMap<String, Node>,
    }
    fn render(node: &Node) -> Value {
        let mut map = Map::new();
        if node.leaf && !node.children.is_empty() {
            map.insert(".".to_string(), json!({}));
        }
        for (name, child) in &node.children {
            map.insert(format!("f:{name}"), render(child));
        }
        Value::Object(map)
    }
    let mut root = Node::default();
    for path in fields {
        let mut node = &mut root;
        for segment in path {
            node = node.children.entry(segment.clone()).or_default();
        }
        node.leaf = true;
    }
    render(&root)
}

/// Whether `path` is, contains or lies inside any of `others`.
fn overlaps_any(path: &[String], others: &[FieldPath]) -> bool {
    others.iter().any(|other| {
        let shared = path.len().min(other.len());
        path[..shared] == other[..shared]
    })
}

fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |node, segment| node.as_object()?.get(segment))
}

fn values_equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => json_equal(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for segment in parents {
        match node.as_object_mut().and_then(|map| map.get_mut(segment)) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Value::Object(map) = node {
        map.remove(last);
    }
}

/// Apply's merge: maps merged recursively, everything else (lists too) replaced.
fn deep_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                match target.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host() -> Value {
        json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "h1", "namespace": "default", "labels": {"a": "1"}},
            "spec": {"online": false, "bmc": {"address": "ipmi://10.0.0.1"}, "tags": ["x", "y"]}
        })
    }

    fn patch(kind: PatchKind, current: &Value, body: &str) -> Result<Value, PatchError> {
        apply_patch(kind, Some(current), body.as_bytes(), None, false)
    }

    fn ssa(
        current: Option<&Value>,
        body: &str,
        manager: &str,
        force: bool,
    ) -> Result<Value, PatchError> {
        apply_patch(
            PatchKind::Apply,
            current,
            body.as_bytes(),
            Some(manager),
            force,
        )
    }

    fn managers(object: &Value) -> Vec<String> {
        object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["manager"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn content_types() {
        use PatchKind::*;
        assert_eq!(
            PatchKind::from_content_type("application/json-patch+json"),
            Some(Json)
        );
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("Application/Strategic-Merge-Patch+JSON"),
            Some(StrategicMerge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            Some(Apply)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+json"),
            Some(Apply)
        );
        assert_eq!(PatchKind::from_content_type("application/json"), None);
        assert_eq!(PatchKind::from_content_type(""), None);
        for kind in [Json, Merge, StrategicMerge, Apply] {
            assert_eq!(
                PatchKind::from_content_type(kind.content_type()),
                Some(kind)
            );
        }
        assert!(matches!(
            patch_kind("text/plain"),
            Err(PatchError::UnsupportedMediaType { content_type }) if content_type == "text/plain"
        ));
    }

    #[test]
    fn merge_patch_merges_maps_deletes_nulls_and_replaces_lists() {
        let result = patch(
            PatchKind::Merge,
            &host(),
            r#"{"metadata":{"labels":{"a":null,"b":"2"}},"spec":{"online":true,"tags":["z"]}}"#,
        )
        .unwrap();
        assert_eq!(result["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(result["spec"]["online"], true);
        assert_eq!(result["spec"]["tags"], json!(["z"]));
        assert_eq!(result["spec"]["bmc"]["address"], "ipmi://10.0.0.1");
    }

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut result = target.clone();
            merge_patch(&mut result, &patch);
            assert_eq!(result, expected, "{target} + {patch}");
        }
    }

    #[test]
    fn merge_patch_body_must_be_a_json_object() {
        assert!(matches!(
            patch(PatchKind::Merge, &host(), "[1]"),
            Err(PatchError::MalformedBody { .. })
        ));
        assert!(matches!(
            patch(PatchKind::Merge, &host(), "{not json"),
            Err(PatchError::MalformedBody { .. })
        ));
    }

    #[test]
    fn non_apply_patches_need_an_existing_object() {
        for kind in [PatchKind::Json, PatchKind::Merge, PatchKind::StrategicMerge] {
            assert_eq!(
                apply_patch(kind, None, b"{}", None, false),
                Err(PatchError::NotFoundForPatch)
            );
        }
    }

    #[test]
    fn json_patch_operations() {
        let result = patch(
            PatchKind::Json,
            &host(),
            r#"[
                {"op": "test", "path": "/spec/online", "value": false},
                {"op": "replace", "path": "/spec/online", "value": true},
                {"op": "add", "path": "/spec/tags/1", "value": "new"},
                {"op": "add", "path": "/spec/tags/-", "value": "last"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
                {"op": "copy", "from": "/metadata/annotations/a~1b", "path": "/spec/copied"},
                {"op": "move", "from": "/spec/bmc", "path": "/spec/oldBmc"}
            ]"#,
        )
        .unwrap();
        assert_eq!(result["spec"]["online"], true);
        assert_eq!(result["spec"]["tags"], json!(["x", "new", "y", "last"]));
        assert_eq!(result["metadata"]["labels"], json!({}));
        assert_eq!(result["spec"]["copied"], "c");
        assert_eq!(result["spec"]["oldBmc"]["address"], "ipmi://10.0.0.1");
        assert!(result["spec"].get("bmc").is_none());
    }

    #[test]
    fn json_patch_failures_name_the_operation_and_change_nothing() {
        let failed = patch(
            PatchKind::Json,
            &host(),
            r#"[{"op": "replace", "path": "/spec/online", "value": true},
                {"op": "test", "path": "/spec/online", "value": false}]"#,
        )
        .unwrap_err();
        let PatchError::JsonPatchFailed { op_index, reason } = &failed else {
            panic!("{failed:?}");
        };
        assert_eq!(*op_index, 1);
        assert!(reason.contains("test failed"), "{reason}");

        let cases = [
            (
                r#"[{"op": "remove", "path": "/spec/missing"}]"#,
                "does not exist",
            ),
            (
                r#"[{"op": "replace", "path": "/nope/x", "value": 1}]"#,
                "does not exist",
            ),
            (
                r#"[{"op": "add", "path": "/spec/tags/9", "value": 1}]"#,
                "out of bounds",
            ),
            (
                r#"[{"op": "add", "path": "/spec/tags/01", "value": 1}]"#,
                "not an array index",
            ),
            (
                r#"[{"op": "add", "path": "spec", "value": 1}]"#,
                "must start with '/'",
            ),
            (
                r#"[{"op": "add", "path": "/spec/~2", "value": 1}]"#,
                "'~' escape",
            ),
            (r#"[{"op": "jump", "path": "/spec"}]"#, "unknown operation"),
            (r#"[{"op": "add", "path": "/spec/x"}]"#, "needs a \"value\""),
            (r#"[{"path": "/spec"}]"#, "\"op\""),
            (
                r#"[{"op": "move", "from": "/spec", "path": "/spec/inner"}]"#,
                "own children",
            ),
            (r#"[{"op": "remove", "path": ""}]"#, "whole document"),
            (
                r#"[{"op": "add", "path": "/spec/online/x", "value": 1}]"#,
                "not an object or array",
            ),
        ];
        for (body, expected) in cases {
            match patch(PatchKind::Json, &host(), body) {
                Err(PatchError::JsonPatchFailed {
                    op_index: 0,
                    reason,
                }) => {
                    assert!(reason.contains(expected), "{body}: {reason}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            patch(PatchKind::Json, &host(), r#"{"op": "add"}"#),
            Err(PatchError::MalformedBody { .. })
        ));
    }

    #[test]
    fn json_patch_test_compares_numbers_by_value_and_can_replace_the_root() {
        let doc = json!({"n": 1});
        let ok = json_patch(&doc, &json!([{"op": "test", "path": "/n", "value": 1.0}])).unwrap();
        assert_eq!(ok, doc);
        let replaced =
            json_patch(&doc, &json!([{"op": "replace", "path": "", "value": [1]}])).unwrap();
        assert_eq!(replaced, json!([1]));
    }

    #[test]
    fn strategic_merge_replaces_lists_and_understands_directives() {
        let current = json!({
            "metadata": {"name": "d"},
            "spec": {
                "containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}],
                "finalizers": ["x", "y", "z"],
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "selector": {"app": "d", "tier": "web"},
                "gone": {"a": 1}
            }
        });
        let result = patch(
            PatchKind::StrategicMerge,
            &current,
            r#"{"spec": {
                "$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "a", "image": "3"}, {"$patch": "delete", "name": "b"}],
                "$deleteFromPrimitiveList/finalizers": ["y"],
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                "selector": {"$patch": "replace", "app": "e"},
                "gone": {"$patch": "delete"}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "a", "image": "3"}])
        );
        assert_eq!(result["spec"]["finalizers"], json!(["x", "z"]));
        assert_eq!(result["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(result["spec"]["selector"], json!({"app": "e"}));
        assert!(result["spec"].get("gone").is_none());
        assert!(result["spec"].get("$setElementOrder/containers").is_none());

        assert!(matches!(
            patch(
                PatchKind::StrategicMerge,
                &current,
                r#"{"$patch": "delete"}"#
            ),
            Err(PatchError::MalformedBody { .. })
        ));
    }

    #[test]
    fn apply_requires_a_field_manager() {
        let body = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}"#;
        for manager in [None, Some("")] {
            let error = apply_patch(PatchKind::Apply, None, body, manager, false).unwrap_err();
            assert_eq!(error, PatchError::FieldManagerRequired);
            assert_eq!(
                error.to_string(),
                r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch"#
            );
        }
    }

    #[test]
    fn apply_creates_from_yaml_and_records_the_manager() {
        let body = "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: h1\n  labels:\n    rack: r1\nspec:\n  online: true\n  tags: [a, b]\n  bmc: {}\n";
        let created = ssa(None, body, "vmetal", false).unwrap();
        assert_eq!(created["spec"]["online"], true);
        assert_eq!(created["metadata"]["name"], "h1");
        let entry = &created["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "vmetal");
        assert_eq!(entry["operation"], "Apply");
        assert_eq!(entry["apiVersion"], "metal3.io/v1alpha1");
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(
            entry["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:rack": {}}},
                "f:spec": {"f:online": {}, "f:tags": {}, "f:bmc": {}}
            })
        );
    }

    #[test]
    fn apply_rejects_bodies_that_are_not_objects_with_type_meta() {
        for body in [
            "- a\n- b\n",
            "",
            "kind: X\n",
            "apiVersion: v1\nkind: [\n",
            "{\"apiVersion\":\"v1\"}",
        ] {
            assert!(
                matches!(
                    ssa(None, body, "m", false),
                    Err(PatchError::MalformedBody { .. })
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn apply_merges_into_the_live_object_and_keeps_others_fields() {
        let live = host();
        let applied = ssa(
            Some(&live),
            r#"{"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": "h1", "labels": {"b": "2"}},
                "spec": {"online": true, "tags": ["only"]}}"#,
            "kube-rs",
            false,
        )
        .unwrap();
        assert_eq!(applied["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(applied["spec"]["online"], true);
        assert_eq!(applied["spec"]["tags"], json!(["only"]));
        assert_eq!(applied["spec"]["bmc"]["address"], "ipmi://10.0.0.1");
        assert_eq!(managers(&applied), ["kube-rs"]);
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let first = ssa(
            None,
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "1"}}"#,
            "alice",
            false,
        )
        .unwrap();

        // Same value: shared ownership, no conflict.
        let shared = ssa(
            Some(&first),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}"#,
            "bob",
            false,
        )
        .unwrap();
        assert_eq!(managers(&shared), ["alice", "bob"]);

        let body = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2", "c": "3"}}"#;
        let conflict = ssa(Some(&shared), body, "bob", false).unwrap_err();
        assert_eq!(
            conflict,
            PatchError::Conflict {
                manager: "alice".to_string(),
                api_version: "v1".to_string(),
                fields: vec![".data.a".to_string()],
            }
        );
        assert_eq!(
            conflict.to_string(),
            r#"Apply failed with 1 conflict: conflict with "alice" using v1: .data.a"#
        );

        let forced = ssa(Some(&shared), body, "bob", true).unwrap();
        assert_eq!(forced["data"], json!({"a": "2", "b": "1", "c": "3"}));
        let entries = forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries[0]["manager"], "alice");
        assert_eq!(entries[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:c": {}}})
        );
    }

    #[test]
    fn apply_conflicts_with_update_managers_recorded_by_real_servers() {
        let mut live = host();
        live["metadata"]["managedFields"] = json!([{
            "manager": "kubectl-edit", "operation": "Update", "apiVersion": "metal3.io/v1alpha1",
            "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:online": {}, "f:tags": {"v:\"x\"": {}}, "f:bmc": {".": {}, "f:address": {}}}}
        }]);
        let body = r#"{"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "h1"},
                       "spec": {"online": true, "tags": ["q"], "bmc": {"address": "ipmi://10.0.0.1"}}}"#;
        let error = ssa(Some(&live), body, "flux", false).unwrap_err();
        let PatchError::Conflict {
            manager, fields, ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(manager, "kubectl-edit");
        assert_eq!(fields, &[".spec.online", ".spec.tags"]);
        assert!(
            error
                .to_string()
                .starts_with("Apply failed with 2 conflicts: conflicts with \"kubectl-edit\"")
        );

        let forced = ssa(Some(&live), body, "flux", true).unwrap();
        let edit = &forced["metadata"]["managedFields"][0];
        assert_eq!(
            edit["time"], "2025-01-01T00:00:00Z",
            "other fields of the entry are kept"
        );
        assert_eq!(
            edit["fieldsV1"],
            json!({"f:spec": {"f:bmc": {".": {}, "f:address": {}}}})
        );
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let first = ssa(
            None,
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"x": "1"}}, "data": {"a": "1", "b": "1"}}"#,
            "alice",
            false,
        )
        .unwrap();
        // Bob co-owns data.b, so it survives alice dropping it; data.a and the label do not.
        let shared = ssa(
            Some(&first),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"b": "1"}}"#,
            "bob",
            false,
        )
        .unwrap();
        let second = ssa(
            Some(&shared),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"c": "1"}}"#,
            "alice",
            false,
        )
        .unwrap();
        assert_eq!(second["data"], json!({"b": "1", "c": "1"}));
        assert_eq!(second["metadata"]["labels"], json!({}));
        assert_eq!(second["metadata"]["name"], "c");
    }

    #[test]
    fn apply_ignores_managed_fields_in_the_body_and_reapplying_is_stable() {
        let body = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c",
                       "managedFields": [{"manager": "evil", "fieldsV1": {"f:data": {}}}]}, "data": {"a": "1"}}"#;
        let first = ssa(None, body, "m", false).unwrap();
        assert_eq!(managers(&first), ["m"]);
        let again = ssa(Some(&first), body, "m", false).unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn fields_v1_round_trips_nested_and_self_owned_nodes() {
        let fields = vec![
            vec!["spec".to_string(), "bmc".to_string()],
            vec!["spec".to_string(), "bmc".to_string(), "address".to_string()],
            vec!["status".to_string()],
        ];
        let set = fields_v1(&fields);
        assert_eq!(
            set,
            json!({"f:spec": {"f:bmc": {".": {}, "f:address": {}}}, "f:status": {}})
        );
        let mut parsed = Vec::new();
        parse_fields_v1(&set, &mut Vec::new(), &mut parsed);
        parsed.sort();
        let mut expected = fields;
        expected.sort();
        assert_eq!(parsed, expected);
    }

    /// A merge patch that turns `from` into `to` (both objects, `to` without nulls).
    fn diff(from: &Value, to: &Value) -> Value {
        match (from, to) {
            (Value::Object(from), Value::Object(to)) => {
                let mut patch = Map::new();
                for key in from.keys().filter(|key| !to.contains_key(*key)) {
                    patch.insert(key.clone(), Value::Null);
                }
                for (key, value) in to {
                    match from.get(key) {
                        Some(old) if old == value => {}
                        Some(old @ Value::Object(_)) if value.is_object() => {
                            patch.insert(key.clone(), diff(old, value));
                        }
                        _ => {
                            patch.insert(key.clone(), value.clone());
                        }
                    }
                }
                Value::Object(patch)
            }
            (_, to) => to.clone(),
        }
    }

    fn without_nulls(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, value)| !value.is_null())
                    .map(|(key, value)| (key, without_nulls(value)))
                    .collect(),
            ),
            other => other,
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Quarters survive serde_json's (not bit-exact) float parsing round trip.
            (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
            "[a-c$/~]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-e$]{1,2}", inner, 0..5)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-e]{1,2}", arb_json(), 0..6)
            .prop_map(|map| Value::Object(map.into_iter().collect()))
    }

    fn arb_operation() -> impl Strategy<Value = Value> {
        let pointer =
            prop::collection::vec(prop_oneof![Just("-".to_string()), "[a-c0-2~]{0,2}"], 0..3)
                .prop_map(|tokens| {
                    tokens
                        .iter()
                        .map(|token| format!("/{token}"))
                        .collect::<String>()
                });
        (
            prop_oneof![
                Just("add"), Just("remove"), Just("replace"), Just("move"), Just("copy"), Just("test"), Just("x")
            ],
            pointer.clone(),
            pointer,
            arb_json(),
        )
            .prop_map(|(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}))
    }

    proptest! {
        #[test]
        fn merge_patch_never_panics(target in arb_json(), patch in arb_json()) {
            let mut result = target.clone();
            merge_patch(&mut result, &patch);
            let body = serde_json::to_vec(&patch).unwrap();
            let _ = apply_patch(PatchKind::Merge, Some(&target), &body, None, false);
            let _ = apply_patch(PatchKind::StrategicMerge, Some(&target), &body, None, false);
        }

        #[test]
        fn merge_patch_computed_from_the_full_object_replaces_everything(
            from in arb_object(),
            to in arb_object(),
        ) {
            let to = without_nulls(to);
            let body = serde_json::to_vec(&diff(&from, &to)).unwrap();
            let result = apply_patch(PatchKind::Merge, Some(&from), &body, None, false).unwrap();
            prop_assert_eq!(result, to);
        }

        #[test]
        fn merge_patch_is_idempotent(target in arb_json(), patch in arb_json()) {
            let mut once = target;
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn json_patch_never_panics(document in arb_json(), operations in prop::collection::vec(arb_operation(), 0..6)) {
            let body = serde_json::to_vec(&operations).unwrap();
            let _ = apply_patch(PatchKind::Json, Some(&document), &body, None, false);
        }

        #[test]
        fn apply_never_panics(
            current in prop::option::of(arb_object()),
            applied in arb_object(),
            force in any::<bool>(),
        ) {
            let mut applied = applied;
            if let Value::Object(map) = &mut applied {
                map.insert("apiVersion".into(), json!("v1"));
                map.insert("kind".into(), json!("ConfigMap"));
            }
            let body = serde_json::to_vec(&applied).unwrap();
            let _ = apply_patch(PatchKind::Apply, current.as_ref(), &body, Some("m"), force);
            let _ = apply_patch(PatchKind::Apply, current.as_ref(), &body, Some("other"), force);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..64)) {
            let current = json!({"a": 1});
            for kind in [PatchKind::Json, PatchKind::Merge, PatchKind::StrategicMerge, PatchKind::Apply] {
                let _ = apply_patch(kind, Some(&current), &body, Some("m"), false);
            }
        }
    }
}

//! CRD structural-schema handling: drop non-nullable nulls, apply defaults, prune unknown
//! fields and validate an object against a version's `openAPIV3Schema`, as kube-apiserver does.
//!
//! Everything here is pure: the handlers decode the body, call [`validate_and_default`] (or
//! [`validate_default_and_prune`] to also get the pruned paths for `Warning` headers) and turn
//! the [`FieldError`]s into a 422 `Status` with [`status_message`] and [`status_causes`].
//!
//! The order is kube-apiserver's: non-nullable `null`s are replaced by their default or removed,
//! absent properties with a `default` are filled in (recursively, inside array items and nested
//! objects too, never inside `metadata`), unknown fields are removed unless a node says
//! `x-kubernetes-preserve-unknown-fields`, then the value is validated. Error texts follow
//! kube-openapi and `k8s.io/apimachinery/pkg/util/validation/field`, so kubectl users read the
//! messages they know (`spec.online: Invalid value: "string": spec.online in body must be of type
//! boolean: "string"` — like the real server, a type error names the type it found, not the value).
//!
//! `metadata`, `apiVersion` and `kind` of the resource root (and of every
//! `x-kubernetes-embedded-resource` node) are kept and only type-checked: ObjectMeta has its own
//! validation in the handlers.

use std::collections::HashMap;
use std::fmt::Write as _;

use regex::Regex;
use serde_json::{Map, Value, json};

/// Fields of a resource root that the schema neither prunes nor validates beyond their type.
const META_KEYS: [&str; 3] = ["apiVersion", "kind", "metadata"];
const EMBEDDED: &str = "x-kubernetes-embedded-resource";
const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";
const INT_OR_STRING: &str = "x-kubernetes-int-or-string";

/// What is wrong with a field; the same set as `field.ErrorType` in apimachinery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// A required field is missing (`Required value`).
    Required,
    /// The value breaks a constraint: pattern, minimum, format, `oneOf`… (`Invalid value`).
    Invalid,
    /// The value has the wrong JSON type (`Invalid value`, with the found type as the value).
    TypeInvalid,
    /// The value is not one of the schema's `enum` values (`Unsupported value`).
    NotSupported,
    /// A string is longer than `maxLength` (`Too long`).
    TooLong,
    /// An array or map has more than `maxItems`/`maxProperties` entries (`Too many`).
    TooMany,
}

impl FieldErrorKind {
    /// The `StatusCause.reason` kube-apiserver reports for this kind (`FieldValueInvalid`, …).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
        }
    }

    /// The words that start the error body (`Invalid value`, `Required value`, …).
    pub fn label(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
        }
    }
}

/// One invalid field of an object, displayed as kube-apiserver does
/// (`spec.bootMode: Unsupported value: "bios": supported values: "UEFI", ...`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.display())]
pub struct FieldError {
    /// Where the field is, e.g. `spec.bmc.address` or `spec.nics[2].mac`.
    pub path: String,
    /// What is wrong with it.
    pub kind: FieldErrorKind,
    /// The offending value as shown after the label (for type errors: the type found); `None`
    /// for kinds that show no value (`Required value`, `Too long`).
    pub bad_value: Option<Value>,
    /// The detail after the value (`spec.online in body must be of type boolean: "string"`);
    /// may be empty.
    pub message: String,
}

impl FieldError {
    /// The error without its path: what kube-apiserver puts in `StatusCause.message`.
    pub fn body(&self) -> String {
        let mut out = self.kind.label().to_string();
        if let Some(value) = &self.bad_value {
            let _ = write!(out, ": {}", render_value(value));
        }
        if !self.message.is_empty() {
            let _ = write!(out, ": {}", self.message);
        }
        out
    }

    fn display(&self) -> String {
        if self.path.is_empty() {
            self.body()
        } else {
            format!("{}: {}", self.path, self.body())
        }
    }
}

/// Apply defaults, prune unknown fields and validate `object` against `schema` (a CRD version's
/// `openAPIV3Schema` as JSON). `object` is changed in place even when validation fails.
pub fn validate_and_default(schema: &Value, object: &mut Value) -> Result<(), Vec<FieldError>> {
    validate_default_and_prune(schema, object).map(|_pruned| ())
}

/// Like [`validate_and_default`], but also return the paths of the pruned unknown fields, for
/// the `Warning: unknown field "spec.foo"` headers kubectl `--validate=warn|strict` shows.
pub fn validate_default_and_prune(
    schema: &Value,
    object: &mut Value,
) -> Result<Vec<String>, Vec<FieldError>> {
    apply_defaults(schema, object, true);
    let pruned = prune_unknown(schema, object);
    let mut validator = Validator::default();
    validator.validate(schema, object, "", true);
    if validator.errors.is_empty() {
        Ok(pruned)
    } else {
        Err(validator.errors)
    }
}

/// Remove the fields of `object` the schema does not know (unless a node preserves unknown
/// fields) and return their paths (`spec.foo`, `spec.nics[0].bar`), in the order removed.
pub fn prune_unknown(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune(Some(schema), object, "", true, &mut pruned);
    pruned
}

/// The message of the 422 `Status` for an invalid object: `kind` is the qualified kind
/// (`BareMetalHost.metal3.io`, or just `Secret` for the core group), as `NewInvalid` writes it.
pub fn status_message(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let name = json_quote(name);
    let mut seen = Vec::new();
    for error in errors {
        let text = error.to_string();
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    match seen.as_slice() {
        [] => format!("{kind} {name} is invalid"),
        [one] => format!("{kind} {name} is invalid: {one}"),
        many => format!("{kind} {name} is invalid: [{}]", many.join(", ")),
    }
}

/// The `details.causes` of the 422 `Status`: one `{"reason","message","field"}` per error.
pub fn status_causes(errors: &[FieldError]) -> Vec<Value> {
    errors
        .iter()
        .map(|error| {
            json!({
                "reason": error.kind.reason(),
                "message": error.body(),
                "field": error.path,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// schema accessors

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn nullable(schema: &Value) -> bool {
    flag(schema, "nullable")
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

fn items(schema: &Value) -> Option<&Value> {
    schema.get("items").filter(|items| items.is_object())
}

/// `additionalProperties`: absent, a bool, or a schema for every unnamed key.
#[derive(Clone, Copy)]
enum Additional<'a> {
    Absent,
    Allowed,
    Denied,
    Schema(&'a Value),
}

fn additional(schema: &Value) -> Additional<'_> {
    match schema.get("additionalProperties") {
        Some(Value::Bool(true)) => Additional::Allowed,
        Some(Value::Bool(false)) => Additional::Denied,
        Some(extra @ Value::Object(_)) => Additional::Schema(extra),
        _ => Additional::Absent,
    }
}

fn is_meta_key(resource_root: bool, key: &str) -> bool {
    resource_root && META_KEYS.contains(&key)
}

// ---------------------------------------------------------------------------------------------
// paths

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

// ---------------------------------------------------------------------------------------------
// defaulting

/// Replace non-nullable nulls by their default (or drop them) and fill in absent defaulted
/// properties, then recurse: a default that is itself an object gets its nested defaults too.
fn apply_defaults(schema: &Value, value: &mut Value, resource_root: bool) {
    match value {
        Value::Object(map) => {
            let resource_root = resource_root || flag(schema, EMBEDDED);
            let props = properties(schema);
            if let Some(props) = props {
                for (key, prop) in props {
                    if is_meta_key(resource_root, key) {
                        continue;
                    }
                    fill_default(map, key, prop);
                }
            }
            let extra = match additional(schema) {
                Additional::Schema(extra) => Some(extra),
                _ => None,
            };
            if let Some(extra) = extra {
                let unnamed: Vec<String> = map
                    .keys()
                    .filter(|key| props.is_none_or(|props| !props.contains_key(*key)))
                    .filter(|key| !is_meta_key(resource_root, key))
                    .cloned()
                    .collect();
                for key in unnamed {
                    fill_default(map, &key, extra);
                }
            }
            for (key, child) in map.iter_mut() {
                if is_meta_key(resource_root, key) {
                    continue;
                }
                let child_schema = props.and_then(|props| props.get(key)).or(extra);
                if let Some(child_schema) = child_schema {
                    apply_defaults(child_schema, child, false);
                }
            }
        }
        Value::Array(list) => {
            let Some(item_schema) = items(schema) else {
                return;
            };
            for item in list.iter_mut() {
                if item.is_null()
                    && !nullable(item_schema)
                    && let Some(default) = item_schema.get("default")
                {
                    *item = default.clone();
                }
                apply_defaults(item_schema, item, false);
            }
        }
        _ => {}
    }
}

/// Default one map entry: absent or a non-nullable null takes the default; a non-nullable null
/// without a default is removed (kube's `PruneNonNullableNullsWithoutDefaults`).
fn fill_default(map: &mut Map<String, Value>, key: &str, prop: &Value) {
    let default = prop.get("default");
    match (map.get(key), default) {
        (None, Some(default)) => {
            map.insert(key.to_string(), default.clone());
        }
        (Some(Value::Null), Some(default)) if !nullable(prop) => {
            map.insert(key.to_string(), default.clone());
        }
        (Some(Value::Null), None) if !nullable(prop) => {
            map.remove(key);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// pruning

fn prune(
    schema: Option<&Value>,
    value: &mut Value,
    path: &str,
    resource_root: bool,
    pruned: &mut Vec<String>,
) {
    // No schema below `additionalProperties: true`: anything goes.
    let Some(schema) = schema else {
        return;
    };
    let preserve = flag(schema, PRESERVE);
    match value {
        Value::Object(map) => {
            let resource_root = resource_root || flag(schema, EMBEDDED);
            let props = properties(schema);
            let extra = additional(schema);
            let mut removed = Vec::new();
            for (key, child) in map.iter_mut() {
                if is_meta_key(resource_root, key) {
                    continue;
                }
                let child_path = child_path(path, key);
                if let Some(prop) = props.and_then(|props| props.get(key)) {
                    prune(Some(prop), child, &child_path, false, pruned);
                    continue;
                }
                match extra {
                    Additional::Schema(extra) => {
                        prune(Some(extra), child, &child_path, false, pruned)
                    }
                    Additional::Allowed => {}
                    Additional::Absent | Additional::Denied if preserve => {}
                    Additional::Absent | Additional::Denied => removed.push(key.clone()),
                }
            }
            for key in removed {
                map.remove(&key);
                pruned.push(child_path(path, &key));
            }
        }
        Value::Array(list) => {
            if let Some(item_schema) = items(schema) {
                for (index, item) in list.iter_mut().enumerate() {
                    prune(
                        Some(item_schema),
                        item,
                        &index_path(path, index),
                        false,
                        pruned,
                    );
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// validation

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
    /// Patterns compiled during this call; `Err` keeps the compile error for the message.
    patterns: HashMap<String, Result<Regex, String>>,
}

impl Validator {
    fn push(
        &mut self,
        path: &str,
        kind: FieldErrorKind,
        bad_value: Option<Value>,
        message: String,
    ) {
        self.errors.push(FieldError {
            path: path.to_string(),
            kind,
            bad_value,
            message,
        });
    }

    fn invalid(&mut self, path: &str, value: Value, message: String) {
        self.push(path, FieldErrorKind::Invalid, Some(value), message);
    }

    fn validate(&mut self, schema: &Value, value: &Value, path: &str, resource_root: bool) {
        if value.is_null() && nullable(schema) {
            return;
        }
        if !self.check_type(schema, value, path) {
            return;
        }
        self.check_enum(schema, value, path);
        match value {
            Value::String(text) => self.check_string(schema, text, path),
            Value::Number(_) => self.check_number(schema, value, path),
            Value::Array(list) => self.check_array(schema, list, path),
            Value::Object(map) => {
                let resource_root = resource_root || flag(schema, EMBEDDED);
                self.check_object(schema, map, path, resource_root);
            }
            Value::Null | Value::Bool(_) => {}
        }
        self.check_composition(schema, value, path);
    }

    /// `type` and `x-kubernetes-int-or-string`; false when the value has the wrong type, so that
    /// no further (meaningless) errors are reported for it.
    fn check_type(&mut self, schema: &Value, value: &Value, path: &str) -> bool {
        let found = json_type(value);
        let expected = if flag(schema, INT_OR_STRING) {
            if value.is_string() || is_integer(value) {
                return true;
            }
            "integer,string"
        } else {
            let Some(expected) = schema.get("type").and_then(Value::as_str) else {
                return true;
            };
            let ok = match expected {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "number" => value.is_number(),
                "integer" => is_integer(value),
                _ => true,
            };
            if ok {
                return true;
            }
            expected
        };
        self.push(
            path,
            FieldErrorKind::TypeInvalid,
            Some(Value::String(found.to_string())),
            format!(
                "{path} in body must be of type {expected}: {}",
                json_quote(found)
            ),
        );
        false
    }

    fn check_enum(&mut self, schema: &Value, value: &Value, path: &str) {
        let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
            return;
        };
        if allowed.iter().any(|candidate| json_equal(candidate, value)) {
            return;
        }
        let supported: Vec<String> = allowed
            .iter()
            .map(|candidate| match candidate {
                Value::String(text) => json_quote(text),
                other => json_quote(&other.to_string()),
            })
            .collect();
        let message = if supported.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", supported.join(", "))
        };
        self.push(
            path,
            FieldErrorKind::NotSupported,
            Some(value.clone()),
            message,
        );
    }

    fn check_string(&mut self, schema: &Value, text: &str, path: &str) {
        let length = text.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            self.push(
                path,
                FieldErrorKind::TooLong,
                None,
                format!("may not be longer than {max}"),
            );
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            self.invalid(
                path,
                Value::String(text.to_string()),
                format!("{path} in body should be at least {min} chars long"),
            );
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let compiled = self
                .patterns
                .entry(pattern.to_string())
                .or_insert_with(|| Regex::new(pattern).map_err(|error| error.to_string()));
            match compiled {
                Ok(regex) if regex.is_match(text) => {}
                Ok(_) => self.invalid(
                    path,
                    Value::String(text.to_string()),
                    format!("{path} in body should match '{pattern}'"),
                ),
                Err(reason) => {
                    let message = format!(
                        "the schema's pattern '{pattern}' is not a valid regular expression: {reason}"
                    );
                    self.invalid(path, Value::String(text.to_string()), message);
                }
            }
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str)
            && !string_matches_format(format, text)
        {
            self.push(
                path,
                FieldErrorKind::TypeInvalid,
                Some(Value::String(text.to_string())),
                format!(
                    "{path} in body must be of type {format}: {}",
                    json_quote(text)
                ),
            );
        }
    }

    fn check_number(&mut self, schema: &Value, value: &Value, path: &str) {
        let Some(number) = value.as_f64() else {
            return;
        };
        let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
        if let Some(min) = bound("minimum") {
            if flag(schema, "exclusiveMinimum") {
                if number <= min {
                    let message =
                        format!("{path} in body should be greater than {}", go_number(min));
                    self.invalid(path, value.clone(), message);
                }
            } else if number < min {
                let message = format!(
                    "{path} in body should be greater than or equal to {}",
                    go_number(min)
                );
                self.invalid(path, value.clone(), message);
            }
        }
        if let Some(max) = bound("maximum") {
            if flag(schema, "exclusiveMaximum") {
                if number >= max {
                    let message = format!("{path} in body should be less than {}", go_number(max));
                    self.invalid(path, value.clone(), message);
                }
            } else if number > max {
                let message = format!(
                    "{path} in body should be less than or equal to {}",
                    go_number(max)
                );
                self.invalid(path, value.clone(), message);
            }
        }
        if let Some(factor) = bound("multipleOf")
            && factor > 0.0
            && (number / factor).fract().abs() > f64::EPSILON
        {
            let message = format!(
                "{path} in body should be a multiple of {}",
                go_number(factor)
            );
            self.invalid(path, value.clone(), message);
        }
        if schema.get("format").and_then(Value::as_str) == Some("int32")
            && is_integer(value)
            && !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&number)
        {
            self.push(
                path,
                FieldErrorKind::TypeInvalid,
                Some(value.clone()),
                format!(
                    "{path} in body must be of type int32: {}",
                    json_quote(&value.to_string())
                ),
            );
        }
    }

    fn check_array(&mut self, schema: &Value, list: &[Value], path: &str) {
        let count = list.len() as u64;
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && count > max
        {
            let unit = if max == 1 { "item" } else { "items" };
            self.push(
                path,
                FieldErrorKind::TooMany,
                Some(Value::from(count)),
                format!("must have at most {max} {unit}"),
            );
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && count < min
        {
            let message = format!("{path} in body should have at least {min} items");
            self.invalid(path, Value::from(count), message);
        }
        if flag(schema, "uniqueItems") {
            let duplicate = list
                .iter()
                .enumerate()
                .any(|(i, item)| list[..i].iter().any(|earlier| json_equal(earlier, item)));
            if duplicate {
                let message = format!("{path} in body shouldn't contain duplicates");
                self.invalid(path, Value::Array(list.to_vec()), message);
            }
        }
        if let Some(item_schema) = items(schema) {
            for (index, item) in list.iter().enumerate() {
                self.validate(item_schema, item, &index_path(path, index), false);
            }
        }
    }

    fn check_object(
        &mut self,
        schema: &Value,
        map: &Map<String, Value>,
        path: &str,
        resource_root: bool,
    ) {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    self.push(
                        &child_path(path, key),
                        FieldErrorKind::Required,
                        None,
                        String::new(),
                    );
                }
            }
        }
        let count = map.len() as u64;
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && count > max
        {
            let unit = if max == 1 { "item" } else { "items" };
            self.push(
                path,
                FieldErrorKind::TooMany,
                Some(Value::from(count)),
                format!("must have at most {max} {unit}"),
            );
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
            && count < min
        {
            let message = format!("{path} in body should have at least {min} properties");
            self.invalid(path, Value::from(count), message);
        }
        let props = properties(schema);
        for (key, child) in map {
            let child_path = child_path(path, key);
            if is_meta_key(resource_root, key) {
                let expected = if key == "metadata" {
                    "object"
                } else {
                    "string"
                };
                let type_schema = json!({ "type": expected });
                self.check_type(&type_schema, child, &child_path);
                continue;
            }
            if let Some(prop) = props.and_then(|props| props.get(key)) {
                self.validate(prop, child, &child_path, false);
            } else if let Additional::Schema(extra) = additional(schema) {
                self.validate(extra, child, &child_path, false);
            }
        }
    }

    /// `allOf`/`anyOf`/`oneOf`/`not`: value validation only, as structural schemas allow.
    fn check_composition(&mut self, schema: &Value, value: &Value, path: &str) {
        let branches = |name: &str| {
            schema
                .get(name)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        for branch in branches("allOf") {
            self.validate(branch, value, path, false);
        }
        let any_of = branches("anyOf");
        if !any_of.is_empty()
            && !any_of
                .iter()
                .any(|branch| self.matches(branch, value, path))
        {
            let message = format!(
                "{} must validate at least one schema (anyOf)",
                json_quote(path)
            );
            self.invalid(path, value.clone(), message);
        }
        let one_of = branches("oneOf");
        if !one_of.is_empty() {
            let valid = one_of
                .iter()
                .filter(|branch| self.matches(branch, value, path))
                .count();
            if valid != 1 {
                let found = if valid == 0 {
                    "Found none valid".to_string()
                } else {
                    format!("Found {valid} valid alternatives")
                };
                let message = format!(
                    "{} must validate one and only one schema (oneOf). {found}",
                    json_quote(path)
                );
                self.invalid(path, value.clone(), message);
            }
        }
        if let Some(not) = schema.get("not").filter(|not| not.is_object())
            && self.matches(not, value, path)
        {
            let message = format!("{} must not validate the schema (not)", json_quote(path));
            self.invalid(path, value.clone(), message);
        }
    }

    /// Whether `value` satisfies `schema`, without recording its errors.
    fn matches(&mut self, schema: &Value, value: &Value, path: &str) -> bool {
        let outer = std::mem::take(&mut self.errors);
        self.validate(schema, value, path, false);
        let ok = self.errors.is_empty();
        self.errors = outer;
        ok
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers

/// The type name go-openapi reports for a decoded JSON value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Integers, including floats without a fraction (`1.0`), as kube's decoder accepts them.
fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(number) => {
            number.is_i64()
                || number.is_u64()
                || number
                    .as_f64()
                    .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
        }
        _ => false,
    }
}

/// Equality where `1` and `1.0` are the same number.
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

fn string_matches_format(format: &str, text: &str) -> bool {
    match format {
        "date-time" => text.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "date" => text.parse::<k8s_openapi::jiff::civil::Date>().is_ok(),
        "int32" => text.parse::<i32>().is_ok(),
        "int64" => text.parse::<i64>().is_ok(),
        // Other formats (byte, uuid, hostname, …) are accepted as kube does for unknown ones.
        _ => true,
    }
}

/// A Go-`%q`-like quoting (JSON string syntax is close enough for field paths and values).
fn json_quote(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// How apimachinery prints a bad value: strings quoted, `null` as `"null"`, numbers and
/// booleans bare, objects and arrays as JSON.
fn render_value(value: &Value) -> String {
    match value {
        Value::Null => json_quote("null"),
        other => other.to_string(),
    }
}

/// Go's `%v` of a float64 bound: `0`, `1.5`, not `0.0`.
fn go_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        format!("{number}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn bmh_schema() -> Value {
        let crd = vmetal_api::crds::all()
            .into_iter()
            .find(|crd| crd.spec.names.kind == "BareMetalHost")
            .unwrap();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        serde_json::to_value(schema).unwrap()
    }

    fn good_bmh() -> Value {
        json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "h1", "namespace": "default", "labels": {"rack": "r1"}},
            "spec": {
                "online": true,
                "bootMode": "UEFI",
                "bootMACAddress": "52:54:00:00:00:01",
                "bmc": {
                    "address": "redfish://10.0.0.1/redfish/v1/Systems/1",
                    "credentialsName": "h1-bmc"
                },
                "image": {"url": "http://img/os.qcow2", "format": "qcow2"}
            }
        })
    }

    fn errors_of(schema: &Value, mut object: Value) -> Vec<FieldError> {
        validate_and_default(schema, &mut object).expect_err("object must be invalid")
    }

    fn find<'a>(errors: &'a [FieldError], path: &str) -> &'a FieldError {
        errors
            .iter()
            .find(|error| error.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errors:#?}"))
    }

    #[test]
    fn good_bare_metal_host_validates_and_keeps_its_fields() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        let pruned = validate_default_and_prune(&schema, &mut host).unwrap();
        assert!(pruned.is_empty(), "{pruned:?}");
        assert_eq!(host["spec"]["bootMode"], "UEFI");
        assert_eq!(host["metadata"]["labels"]["rack"], "r1");
        assert_eq!(host["apiVersion"], "metal3.io/v1alpha1");
    }

    #[test]
    fn bare_metal_host_with_wrong_types_and_enum_gets_kube_style_errors() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["online"] = json!("yes");
        host["spec"]["bootMode"] = json!("bios");
        host["spec"]["image"] = json!({"format": "qcow2"});
        let errors = errors_of(&schema, host);
        assert_eq!(errors.len(), 3, "{errors:#?}");

        let online = find(&errors, "spec.online");
        assert_eq!(online.kind, FieldErrorKind::TypeInvalid);
        assert_eq!(
            online.to_string(),
            r#"spec.online: Invalid value: "string": spec.online in body must be of type boolean: "string""#
        );
        assert_eq!(
            find(&errors, "spec.bootMode").to_string(),
            r#"spec.bootMode: Unsupported value: "bios": supported values: "UEFI", "UEFISecureBoot", "legacy""#
        );
        assert_eq!(
            find(&errors, "spec.image.url").to_string(),
            "spec.image.url: Required value"
        );
    }

    #[test]
    fn missing_spec_is_required_at_the_root() {
        let schema = bmh_schema();
        let errors = errors_of(
            &schema,
            json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "h"}}),
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), "spec: Required value");
    }

    #[test]
    fn errors_inside_arrays_carry_the_index() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["taints"] = json!([
            {"key": "a", "effect": "NoSchedule"},
            {"key": "b", "effect": "NoSchedule", "timeAdded": "yesterday"},
            {"key": "c"}
        ]);
        let errors = errors_of(&schema, host);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            find(&errors, "spec.taints[1].timeAdded").to_string(),
            r#"spec.taints[1].timeAdded: Invalid value: "yesterday": spec.taints[1].timeAdded in body must be of type date-time: "yesterday""#
        );
        assert_eq!(
            find(&errors, "spec.taints[2].effect").kind,
            FieldErrorKind::Required
        );
    }

    #[test]
    fn valid_date_time_passes() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["taints"] =
            json!([{"key": "a", "effect": "NoExecute", "timeAdded": "2025-01-02T03:04:05Z"}]);
        validate_and_default(&schema, &mut host).unwrap();
    }

    #[test]
    fn unknown_fields_are_pruned_at_every_depth_but_metadata_is_kept() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["colour"] = json!("blue");
        host["spec"]["bmc"]["port"] = json!(623);
        host["spec"]["taints"] = json!([{"key": "a", "effect": "NoSchedule", "extra": 1}]);
        host["extraTopLevel"] = json!(true);
        host["metadata"]["whatever"] = json!("kept");
        let mut pruned = validate_default_and_prune(&schema, &mut host).unwrap();
        pruned.sort();
        assert_eq!(
            pruned,
            [
                "extraTopLevel",
                "spec.bmc.port",
                "spec.colour",
                "spec.taints[0].extra"
            ]
        );
        assert!(host["spec"].get("colour").is_none());
        assert!(host["spec"]["bmc"].get("port").is_none());
        assert!(host.get("extraTopLevel").is_none());
        assert_eq!(host["metadata"]["whatever"], "kept");
    }

    #[test]
    fn crd_defaults_are_applied_only_to_present_parents() {
        let schema = bmh_schema();
        let mut host = json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "h1"},
            "spec": {"bmc": {}}
        });
        validate_and_default(&schema, &mut host).unwrap();
        assert_eq!(host["spec"]["online"], false);
        assert_eq!(host["spec"]["bmc"]["address"], "");
        assert_eq!(host["spec"]["bmc"]["credentialsName"], "");
        assert!(
            host.get("status").is_none(),
            "absent parents are not created"
        );
    }

    #[test]
    fn nulls_of_nullable_fields_stay_and_other_nulls_are_dropped_or_defaulted() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["image"] = Value::Null; // nullable
        host["spec"]["online"] = Value::Null; // not nullable, default false
        host["spec"]["architecture"] = Value::Null; // not nullable, no default
        validate_and_default(&schema, &mut host).unwrap();
        assert_eq!(host["spec"]["image"], Value::Null);
        assert_eq!(host["spec"]["online"], false);
        assert!(host["spec"].get("architecture").is_none());
    }

    #[test]
    fn null_in_a_non_nullable_list_item_is_a_type_error() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["raid"] =
            json!({"hardwareRAIDVolumes": [{"level": "1", "physicalDisks": [null]}]});
        let errors = errors_of(&schema, host);
        assert_eq!(
            errors[0].to_string(),
            r#"spec.raid.hardwareRAIDVolumes[0].physicalDisks[0]: Invalid value: "null": spec.raid.hardwareRAIDVolumes[0].physicalDisks[0] in body must be of type string: "null""#
        );
    }

    #[test]
    fn status_max_items_is_too_many() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        let condition = json!({
            "type": "Ready", "status": "True", "reason": "r", "message": "m",
            "lastTransitionTime": "2025-01-01T00:00:00Z"
        });
        host["status"] = json!({"conditions": vec![condition; 33]});
        let errors = errors_of(&schema, host);
        assert_eq!(
            errors[0].to_string(),
            "status.conditions: Too many: 33: must have at most 32 items"
        );
        assert_eq!(errors[0].kind.reason(), "FieldValueTooMany");
    }

    #[test]
    fn hand_written_defaults_reach_array_items_nested_objects_and_map_values() {
        let schema = json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object", "properties": {"name": {"type": "string", "default": "nope"}}},
                "spec": {
                    "type": "object",
                    "default": {},
                    "properties": {
                        "replicas": {"type": "integer", "default": 1},
                        "strategy": {
                            "type": "object",
                            "default": {},
                            "properties": {"kind": {"type": "string", "default": "Rolling"}}
                        },
                        "ports": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "port": {"type": "integer"},
                                    "protocol": {"type": "string", "default": "TCP"}
                                }
                            }
                        },
                        "labels": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {"weight": {"type": "integer", "default": 10}}
                            }
                        }
                    }
                }
            }
        });
        let mut object = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {},
            "spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}], "labels": {"a": {}}}
        });
        validate_and_default(&schema, &mut object).unwrap();
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(object["spec"]["strategy"]["kind"], "Rolling");
        assert_eq!(object["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(object["spec"]["ports"][1]["protocol"], "UDP");
        assert_eq!(object["spec"]["labels"]["a"]["weight"], 10);
        assert!(
            object["metadata"].get("name").is_none(),
            "metadata is never defaulted"
        );

        let mut empty = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {}});
        validate_and_default(&schema, &mut empty).unwrap();
        assert_eq!(
            empty["spec"]["strategy"]["kind"], "Rolling",
            "defaults of defaults"
        );
    }

    #[test]
    fn string_and_number_constraints() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5, "minLength": 2, "pattern": "^[a-z]+$"},
                "count": {"type": "integer", "minimum": 0, "maximum": 10},
                "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1, "exclusiveMaximum": true},
                "port": {"type": "integer", "format": "int32"},
                "step": {"type": "integer", "multipleOf": 5}
            }
        });
        let errors = errors_of(
            &schema,
            json!({"name": "ABCDEFG", "count": -1, "ratio": 1, "port": 3_000_000_000_u64, "step": 7}),
        );
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            texts.contains(&"name: Too long: may not be longer than 5".to_string()),
            "{texts:#?}"
        );
        assert!(texts.contains(
            &r#"name: Invalid value: "ABCDEFG": name in body should match '^[a-z]+$'"#.to_string()
        ));
        assert!(
            texts.contains(
                &"count: Invalid value: -1: count in body should be greater than or equal to 0"
                    .to_string()
            )
        );
        assert!(
            texts.contains(
                &"ratio: Invalid value: 1: ratio in body should be less than 1".to_string()
            )
        );
        assert!(texts.contains(
            &"step: Invalid value: 7: step in body should be a multiple of 5".to_string()
        ));
        assert_eq!(find(&errors, "port").kind, FieldErrorKind::TypeInvalid);
        assert_eq!(errors.len(), 6);

        let short = errors_of(&schema, json!({"name": "a", "ratio": 0}));
        assert_eq!(short.len(), 2);
        assert_eq!(
            find(&short, "name").to_string(),
            r#"name: Invalid value: "a": name in body should be at least 2 chars long"#
        );
        assert_eq!(
            find(&short, "ratio").to_string(),
            "ratio: Invalid value: 0: ratio in body should be greater than 0"
        );
    }

    #[test]
    fn integers_accept_whole_floats_but_not_fractions() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        validate_and_default(&schema, &mut json!({"n": 3.0})).unwrap();
        let errors = errors_of(&schema, json!({"n": 3.5}));
        assert_eq!(
            errors[0].to_string(),
            r#"n: Invalid value: "number": n in body must be of type integer: "number""#
        );
    }

    #[test]
    fn array_and_object_cardinality() {
        let schema = json!({
            "type": "object",
            "properties": {
                "tags": {"type": "array", "minItems": 1, "uniqueItems": true, "items": {"type": "string"}},
                "labels": {"type": "object", "maxProperties": 1, "minProperties": 1, "additionalProperties": {"type": "string"}}
            }
        });
        let errors = errors_of(
            &schema,
            json!({"tags": ["a", "a"], "labels": {"a": "1", "b": 2}}),
        );
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            texts.contains(
                &r#"tags: Invalid value: ["a","a"]: tags in body shouldn't contain duplicates"#
                    .to_string()
            ),
            "{texts:#?}"
        );
        assert!(texts.contains(&"labels: Too many: 2: must have at most 1 item".to_string()));
        assert!(texts.contains(&r#"labels.b: Invalid value: "integer": labels.b in body must be of type string: "integer""#.to_string()));
        assert_eq!(errors.len(), 3);

        let few = errors_of(&schema, json!({"tags": [], "labels": {}}));
        assert_eq!(few.len(), 2, "{few:#?}");
        assert_eq!(
            find(&few, "tags").to_string(),
            "tags: Invalid value: 0: tags in body should have at least 1 items"
        );
    }

    #[test]
    fn int_or_string_and_preserve_unknown_fields() {
        let schema = json!({
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                         "properties": {"known": {"type": "string"}}},
                "anything": {"x-kubernetes-preserve-unknown-fields": true}
            }
        });
        let mut ok = json!({"port": "http", "free": {"x": {"y": 1}, "known": "k"}, "anything": [1, {"a": 2}]});
        assert!(prune_unknown(&schema, &mut ok.clone()).is_empty());
        validate_and_default(&schema, &mut ok).unwrap();
        assert_eq!(ok["free"]["x"]["y"], 1);
        validate_and_default(&schema, &mut json!({"port": 8080})).unwrap();

        let errors = errors_of(&schema, json!({"port": true, "free": {"known": 1}}));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            find(&errors, "port").to_string(),
            r#"port: Invalid value: "boolean": port in body must be of type integer,string: "boolean""#
        );
        assert_eq!(
            find(&errors, "free.known").kind,
            FieldErrorKind::TypeInvalid
        );
    }

    #[test]
    fn embedded_resources_keep_their_type_meta() {
        let schema = json!({
            "type": "object",
            "properties": {
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": true,
                    "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}
                }
            }
        });
        let mut object = json!({"template": {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
            "spec": {"a": "b", "c": "d"}, "junk": 1
        }});
        let mut pruned = validate_default_and_prune(&schema, &mut object).unwrap();
        pruned.sort();
        assert_eq!(pruned, ["template.junk", "template.spec.c"]);
        assert_eq!(object["template"]["kind"], "ConfigMap");
        assert_eq!(object["template"]["metadata"]["name"], "x");
    }

    #[test]
    fn root_type_meta_is_only_type_checked() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let errors = errors_of(
            &schema,
            json!({"apiVersion": 1, "kind": "X", "metadata": "m"}),
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            find(&errors, "apiVersion").kind,
            FieldErrorKind::TypeInvalid
        );
        assert_eq!(find(&errors, "metadata").kind, FieldErrorKind::TypeInvalid);
    }

    #[test]
    fn object_without_properties_is_pruned_empty() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object"}}});
        let mut object = json!({"status": {"a": 1}});
        assert_eq!(prune_unknown(&schema, &mut object), ["status.a"]);
        assert_eq!(object["status"], json!({}));
    }

    #[test]
    fn composition_validates_values() {
        let schema = json!({
            "type": "object",
            "properties": {
                "any": {"type": "string", "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}]},
                "one": {"type": "integer", "oneOf": [{"minimum": 0}, {"maximum": 10}]},
                "not": {"type": "string", "not": {"enum": ["forbidden"]}},
                "all": {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 3}]}
            }
        });
        validate_and_default(
            &schema,
            &mut json!({"any": "bee", "one": 20, "not": "ok", "all": 2}),
        )
        .unwrap();
        let errors = errors_of(
            &schema,
            json!({"any": "cat", "one": 5, "not": "forbidden", "all": 9}),
        );
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            texts.contains(
                &r#"any: Invalid value: "cat": "any" must validate at least one schema (anyOf)"#
                    .to_string()
            ),
            "{texts:#?}"
        );
        assert!(texts.contains(&r#"one: Invalid value: 5: "one" must validate one and only one schema (oneOf). Found 2 valid alternatives"#.to_string()));
        assert!(
            texts.contains(
                &r#"not: Invalid value: "forbidden": "not" must not validate the schema (not)"#
                    .to_string()
            )
        );
        assert!(texts.contains(
            &"all: Invalid value: 9: all in body should be less than or equal to 3".to_string()
        ));
        assert_eq!(errors.len(), 4);
    }

    #[test]
    fn non_string_enum_values_are_quoted_json() {
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2]}}});
        let errors = errors_of(&schema, json!({"n": 3}));
        assert_eq!(
            errors[0].to_string(),
            r#"n: Unsupported value: 3: supported values: "1", "2""#
        );
        validate_and_default(&schema, &mut json!({"n": 2.0})).unwrap();
    }

    #[test]
    fn invalid_pattern_is_reported_not_panicked() {
        let schema =
            json!({"type": "object", "properties": {"s": {"type": "string", "pattern": "("}}});
        let errors = errors_of(&schema, json!({"s": "x"}));
        assert_eq!(errors[0].kind, FieldErrorKind::Invalid);
        assert!(errors[0].message.contains("not a valid regular expression"));
    }

    #[test]
    fn status_message_and_causes_match_new_invalid() {
        let schema = bmh_schema();
        let mut host = good_bmh();
        host["spec"]["online"] = json!("yes");
        host["spec"]["bootMode"] = json!("bios");
        let errors = errors_of(&schema, host);
        let message = status_message("BareMetalHost.metal3.io", "h1", &errors);
        assert!(
            message.starts_with(r#"BareMetalHost.metal3.io "h1" is invalid: [spec."#),
            "{message}"
        );
        assert!(message.contains(r#"spec.online: Invalid value: "string": spec.online in body must be of type boolean: "string""#));
        assert!(message.ends_with(']'));

        let one = status_message("BareMetalHost.metal3.io", "h1", &errors[..1]);
        assert!(!one.contains('['));
        assert_eq!(
            status_message("Secret", "s", &[]),
            r#"Secret "s" is invalid"#
        );

        let causes = status_causes(&errors);
        let online = causes
            .iter()
            .find(|cause| cause["field"] == "spec.online")
            .unwrap();
        assert_eq!(online["reason"], "FieldValueTypeInvalid");
        assert_eq!(
            online["message"],
            r#"Invalid value: "string": spec.online in body must be of type boolean: "string""#
        );
        let boot = causes
            .iter()
            .find(|cause| cause["field"] == "spec.bootMode")
            .unwrap();
        assert_eq!(boot["reason"], "FieldValueNotSupported");
    }

    #[test]
    fn duplicate_messages_are_listed_once() {
        let error = FieldError {
            path: "spec".into(),
            kind: FieldErrorKind::Required,
            bad_value: None,
            message: String::new(),
        };
        assert_eq!(
            status_message("X.g", "n", &[error.clone(), error]),
            r#"X.g "n" is invalid: spec: Required value"#
        );
    }

    #[test]
    fn machine_crd_schema_validates_an_empty_spec_or_reports_cleanly() {
        for crd in vmetal_api::crds::all() {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut object = json!({
                "apiVersion": format!("{}/{}", crd.spec.group, crd.spec.versions[0].name),
                "kind": crd.spec.names.kind,
                "metadata": {"name": "x"},
                "spec": {"unknownField": 1}
            });
            // Whatever the outcome, the unknown field is gone and nothing panics.
            let _ = validate_and_default(&schema, &mut object);
            assert!(object["spec"].get("unknownField").is_none());
        }
    }
}

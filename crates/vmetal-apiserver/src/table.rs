//! Server-side printing: turn objects into a `meta.k8s.io/v1` `Table` from printer columns,
//! which is what `kubectl get` asks for with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! Cells are computed as kube-apiserver's CRD table convertor does: the column's JSONPath (the
//! simple subset CRDs allow: `.a.b`, `.a[0].b`, `.a['dotted.key']`, optionally wrapped in `{}`) is
//! evaluated on the object; a missing field is a `null` cell (kubectl prints `<none>`); `string`
//! columns print the value as Go's jsonpath printer would, `integer`/`number`/`boolean` keep
//! their JSON type, `date` columns become an age like `3m2s` (apimachinery's `HumanDuration`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

/// ObjectMeta's documentation of `name`, which kube-apiserver uses for the `Name` column.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// ObjectMeta's documentation of `creationTimestamp`, used for the default `Age` column.
const CREATION_TIMESTAMP_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// A JSONPath a printer column cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The path is not in the simple subset printer columns support.
    #[error("invalid JSONPath {path:?} at character {position}: {reason}")]
    InvalidJsonPath {
        /// The column's `jsonPath` as given.
        path: String,
        /// Where in `path` parsing stopped.
        position: usize,
        /// What was expected there.
        reason: &'static str,
    },
}

/// What each row's `object` holds (`?includeObject=` of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object: rows have only cells.
    None,
    /// A `PartialObjectMetadata` with the object's `metadata` (kube's default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

/// The `?includeObject=` query parameter; anything but `None` or `Object` means `Metadata`.
pub fn parse_include_object(query_value: Option<&str>) -> IncludeObject {
    match query_value {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

/// Whether an `Accept` header asks for a `meta.k8s.io/v1` `Table` in any of its alternatives
/// (kubectl sends the v1 Table, then v1beta1, then plain JSON). Only v1 Tables are served.
pub fn parse_table_accept(accept_header: &str) -> bool {
    accept_header.split(',').any(|alternative| {
        let mut parts = alternative.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return false;
        }
        let (mut is_table, mut group, mut version) = (false, false, false);
        for parameter in parts {
            let Some((key, value)) = parameter.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "as" => is_table = value == "Table",
                "g" => group = value == "meta.k8s.io",
                "v" => version = value == "v1",
                _ => {}
            }
        }
        is_table && group && version
    })
}

/// The columns for kinds without `additionalPrinterColumns`: just `Age`, as kube-apiserver does.
pub fn default_columns() -> Vec<CustomResourceColumnDefinition> {
    vec![CustomResourceColumnDefinition {
        name: "Age".to_string(),
        type_: "date".to_string(),
        json_path: ".metadata.creationTimestamp".to_string(),
        description: Some(CREATION_TIMESTAMP_DESCRIPTION.to_string()),
        format: None,
        priority: None,
    }]
}

/// Render `objects` as a `meta.k8s.io/v1` `Table`: a `Name` column, then `columns` in order.
/// `now` is the clock ages are measured against; `list_resource_version` and `continue_token`
/// go to the table's `metadata` like a list's.
pub fn render_table(
    columns: &[CustomResourceColumnDefinition],
    objects: &[Value],
    include: IncludeObject,
    now: Timestamp,
    list_resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let mut definitions = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": NAME_DESCRIPTION,
        "priority": 0,
    })];
    definitions.extend(columns.iter().map(|column| {
        json!({
            "name": column.name,
            "type": column.type_,
            "format": column.format.clone().unwrap_or_default(),
            "description": column.description.clone().unwrap_or_default(),
            "priority": column.priority.unwrap_or(0),
        })
    }));
    // Parse each path once; an unusable path yields null cells, as kube's convertor does.
    let paths: Vec<Option<Vec<Segment>>> = columns
        .iter()
        .map(|column| parse_json_path(&column.json_path).ok())
        .collect();

    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut cells = vec![Value::String(name.to_string())];
            for (column, path) in columns.iter().zip(&paths) {
                let found = path.as_deref().and_then(|path| evaluate(object, path));
                cells.push(cell(&column.type_, found, now));
            }
            let mut row = Map::new();
            row.insert("cells".to_string(), Value::Array(cells));
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    let metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
                    row.insert(
                        "object".to_string(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": metadata,
                        }),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".to_string(), object.clone());
                }
            }
            Value::Object(row)
        })
        .collect();

    let mut metadata = Map::new();
    metadata.insert(
        "resourceVersion".to_string(),
        Value::String(list_resource_version.to_string()),
    );
    if let Some(token) = continue_token.filter(|token| !token.is_empty()) {
        metadata.insert("continue".to_string(), Value::String(token.to_string()));
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// Check that a printer column's `jsonPath` is one this module can evaluate (for CRD admission).
pub fn check_json_path(path: &str) -> Result<(), TableError> {
    parse_json_path(path).map(|_segments| ())
}

/// The value at a printer-column JSONPath in `object`, if there is one.
pub fn json_path_value<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let segments = parse_json_path(path).ok()?;
    evaluate(object, &segments)
}

/// apimachinery's `HumanDuration`: ~2-3 significant figures (`45s`, `3m2s`, `4h10m`, `9d`, `2y3d`).
pub fn human_duration(elapsed: SignedDuration) -> String {
    let seconds = elapsed.as_secs();
    // Up to a second in the future is clock skew, "now"; further is nonsense.
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// One cell, typed as kube's CRD table convertor types it.
fn cell(column_type: &str, found: Option<&Value>, now: Timestamp) -> Value {
    let Some(value) = found.filter(|value| !value.is_null()) else {
        return Value::Null;
    };
    match column_type {
        "string" => Value::String(go_print(value)),
        "integer" => match value {
            Value::Number(number) => number
                .as_i64()
                .or_else(|| number.as_f64().map(|f| f as i64))
                .map_or(Value::Null, Value::from),
            _ => Value::Null,
        },
        "number" => value.as_f64().map_or(Value::Null, Value::from),
        "boolean" => value.as_bool().map_or(Value::Null, Value::Bool),
        "date" => match value {
            Value::String(text) if text.is_empty() => Value::String("<unknown>".to_string()),
            Value::String(text) => match text.parse::<Timestamp>() {
                Ok(created) => Value::String(human_duration(now.duration_since(created))),
                Err(_) => Value::String("<invalid>".to_string()),
            },
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

/// How Go's jsonpath printer (`fmt.Fprint`) shows a decoded JSON value: strings raw, maps as
/// `map[k:v]` with sorted keys, slices as `[a b]`.
fn go_print(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        Value::Array(list) => {
            let items: Vec<String> = list.iter().map(go_print).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let items: Vec<String> = entries
                .into_iter()
                .map(|(key, value)| format!("{key}:{}", go_print(value)))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// One step of a parsed JSONPath.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    Index(i64),
    Wildcard,
}

fn parse_json_path(path: &str) -> Result<Vec<Segment>, TableError> {
    let error = |position: usize, reason: &'static str| TableError::InvalidJsonPath {
        path: path.to_string(),
        position,
        reason,
    };
    let trimmed = path.trim();
    let inner = match trimmed.strip_prefix('{') {
        Some(rest) => rest
            .strip_suffix('}')
            .ok_or_else(|| error(trimmed.len(), "a closing '}'"))?,
        None => trimmed,
    };
    let chars: Vec<char> = inner.trim().chars().collect();
    let mut segments = Vec::new();
    let mut i = 0;
    if chars.first() == Some(&'$') {
        i = 1;
    }
    if i >= chars.len() {
        return Err(error(i, "a path such as .status.state"));
    }
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'.') {
                    return Err(error(i, "no recursive descent (..)"));
                }
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && chars.get(i + 1) == Some(&'.') {
                        name.push('.');
                        i += 2;
                        continue;
                    }
                    name.push(chars[i]);
                    i += 1;
                }
                match name.as_str() {
                    "" if i == chars.len() && segments.is_empty() => {} // `.` is the object
                    "" => return Err(error(i, "a field name after '.'")),
                    "*" => segments.push(Segment::Wildcard),
                    _ => segments.push(Segment::Field(name)),
                }
            }
            '[' => {
                i += 1;
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .ok_or_else(|| error(i, "a closing ']'"))?;
                let body: String = chars[i..i + close].iter().collect();
                let body = body.trim();
                let quoted = body.len() >= 2
                    && ((body.starts_with('\'') && body.ends_with('\''))
                        || (body.starts_with('"') && body.ends_with('"')));
                if quoted {
                    segments.push(Segment::Field(body[1..body.len() - 1].to_string()));
                } else if body == "*" {
                    segments.push(Segment::Wildcard);
                } else {
                    let index = body
                        .parse::<i64>()
                        .map_err(|_| error(i, "an index, '*' or a quoted key inside []"))?;
                    segments.push(Segment::Index(index));
                }
                i += close + 1;
            }
            _ => return Err(error(i, "'.' or '['")),
        }
    }
    Ok(segments)
}

/// The first value the path reaches (kube takes the first result of a printer-column path).
fn evaluate<'a>(value: &'a Value, segments: &[Segment]) -> Option<&'a Value> {
    let Some((first, rest)) = segments.split_first() else {
        return Some(value);
    };
    match first {
        Segment::Field(name) => evaluate(value.as_object()?.get(name)?, rest),
        Segment::Index(index) => {
            let list = value.as_array()?;
            let position = if *index < 0 {
                list.len()
                    .checked_sub(usize::try_from(index.unsigned_abs()).ok()?)?
            } else {
                usize::try_from(*index).ok()?
            };
            evaluate(list.get(position)?, rest)
        }
        Segment::Wildcard => match value {
            Value::Array(list) => list.iter().find_map(|item| evaluate(item, rest)),
            Value::Object(map) => map.values().find_map(|item| evaluate(item, rest)),
            _ => None,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bmh_columns() -> Vec<CustomResourceColumnDefinition> {
        let crd = vmetal_api::crds::all()
            .into_iter()
            .find(|crd| crd.spec.names.kind == "BareMetalHost")
            .unwrap();
        crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap()
    }

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn host(name: &str, created: &str) -> Value {
        json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created, "uid": "u1"},
            "spec": {
                "online": true,
                "bmc": {"address": "redfish://10.0.0.1/redfish/v1/Systems/1"},
                "consumerRef": {"name": "machine-1"}
            },
            "status": {
                "operationalStatus": "OK",
                "provisioning": {"state": "provisioned"},
                "errorType": "provisioning error"
            }
        })
    }

    fn column_names(table: &Value) -> Vec<String> {
        table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|column| column["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn cell_of<'a>(table: &'a Value, row: usize, column: &str) -> &'a Value {
        let index = column_names(table)
            .iter()
            .position(|name| name == column)
            .unwrap();
        &table["rows"][row]["cells"][index]
    }

    #[test]
    fn bare_metal_host_table_has_kubectl_columns_and_cells() {
        let objects = [host("h1", "2025-06-01T11:56:58Z")];
        let table = render_table(
            &bmh_columns(),
            &objects,
            IncludeObject::Metadata,
            now(),
            "42",
            None,
        );
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table["metadata"]["resourceVersion"], "42");
        assert!(table["metadata"].get("continue").is_none());
        assert_eq!(
            column_names(&table),
            [
                "Name", "Status", "State", "Consumer", "BMC", "Online", "Error", "Age"
            ]
        );
        assert_eq!(cell_of(&table, 0, "Name"), "h1");
        assert_eq!(cell_of(&table, 0, "State"), "provisioned");
        assert_eq!(cell_of(&table, 0, "Consumer"), "machine-1");
        assert_eq!(
            cell_of(&table, 0, "Online"),
            "true",
            "string column from a boolean"
        );
        assert_eq!(cell_of(&table, 0, "Error"), "provisioning error");
        assert_eq!(cell_of(&table, 0, "Age"), "3m2s");
        assert_eq!(table["rows"][0]["cells"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn name_column_and_priorities_are_carried() {
        let table = render_table(
            &bmh_columns(),
            &[],
            IncludeObject::Metadata,
            now(),
            "1",
            None,
        );
        let definitions = table["columnDefinitions"].as_array().unwrap();
        assert_eq!(definitions[0]["format"], "name");
        assert_eq!(definitions[0]["type"], "string");
        assert!(
            definitions[0]["description"]
                .as_str()
                .unwrap()
                .starts_with("Name must be unique")
        );
        let priority = |name: &str| {
            definitions
                .iter()
                .find(|column| column["name"] == name)
                .unwrap()["priority"]
                .clone()
        };
        assert_eq!(priority("Status"), 1);
        assert_eq!(priority("BMC"), 1);
        assert_eq!(priority("State"), 0);
        assert_eq!(priority("Age"), 0);
        let age = definitions
            .iter()
            .find(|column| column["name"] == "Age")
            .unwrap();
        assert_eq!(age["type"], "date");
        assert_eq!(age["format"], "");
        assert_eq!(table["rows"], json!([]));
    }

    #[test]
    fn missing_fields_are_null_cells() {
        let mut bare = host("h2", "2025-06-01T12:00:00Z");
        bare["spec"].as_object_mut().unwrap().remove("consumerRef");
        bare.as_object_mut().unwrap().remove("status");
        let table = render_table(
            &bmh_columns(),
            &[bare],
            IncludeObject::None,
            now(),
            "7",
            Some("tok"),
        );
        assert_eq!(cell_of(&table, 0, "Consumer"), &Value::Null);
        assert_eq!(cell_of(&table, 0, "State"), &Value::Null);
        assert_eq!(cell_of(&table, 0, "Error"), &Value::Null);
        assert_eq!(cell_of(&table, 0, "Age"), "0s");
        assert_eq!(table["metadata"]["continue"], "tok");
        assert!(table["rows"][0].get("object").is_none());
    }

    #[test]
    fn include_object_controls_row_objects() {
        let objects = [host("h1", "2025-06-01T11:00:00Z")];
        let metadata = render_table(
            &bmh_columns(),
            &objects,
            IncludeObject::Metadata,
            now(),
            "1",
            None,
        );
        let object = &metadata["rows"][0]["object"];
        assert_eq!(object["kind"], "PartialObjectMetadata");
        assert_eq!(object["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(object["metadata"]["uid"], "u1");
        assert!(object.get("spec").is_none());

        let full = render_table(
            &bmh_columns(),
            &objects,
            IncludeObject::Object,
            now(),
            "1",
            None,
        );
        assert_eq!(full["rows"][0]["object"], objects[0]);
    }

    #[test]
    fn typed_columns_keep_json_types() {
        let columns: Vec<CustomResourceColumnDefinition> = [
            ("Count", "integer", ".status.count"),
            ("Ratio", "number", ".status.ratio"),
            ("Ready", "boolean", ".status.ready"),
            ("Tags", "string", ".spec.tags"),
            ("Labels", "string", ".metadata.labels"),
            ("WrongType", "boolean", ".status.count"),
            ("Broken", "string", ".status..count"),
            (
                "Dotted",
                "string",
                ".metadata.annotations['example.com/owner']",
            ),
            ("First", "string", "{.spec.tags[0]}"),
            ("Last", "string", ".spec.tags[-1]"),
            (
                "Escaped",
                "string",
                ".metadata.labels.app\\.kubernetes\\.io/name",
            ),
        ]
        .into_iter()
        .map(|(name, type_, path)| CustomResourceColumnDefinition {
            name: name.to_string(),
            type_: type_.to_string(),
            json_path: path.to_string(),
            ..Default::default()
        })
        .collect();
        let object = json!({
            "metadata": {
                "name": "x",
                "labels": {"b": "2", "a": "1", "app.kubernetes.io/name": "vmetal"},
                "annotations": {"example.com/owner": "ops"}
            },
            "spec": {"tags": ["red", "blue"]},
            "status": {"count": 3.0, "ratio": 2, "ready": false}
        });
        let table = render_table(&columns, &[object], IncludeObject::None, now(), "1", None);
        assert_eq!(cell_of(&table, 0, "Count"), 3);
        assert_eq!(cell_of(&table, 0, "Ratio"), 2.0);
        assert_eq!(cell_of(&table, 0, "Ready"), false);
        assert_eq!(cell_of(&table, 0, "Tags"), "[red blue]");
        assert_eq!(
            cell_of(&table, 0, "Labels"),
            "map[a:1 app.kubernetes.io/name:vmetal b:2]"
        );
        assert_eq!(cell_of(&table, 0, "WrongType"), &Value::Null);
        assert_eq!(cell_of(&table, 0, "Broken"), &Value::Null);
        assert_eq!(cell_of(&table, 0, "Dotted"), "ops");
        assert_eq!(cell_of(&table, 0, "First"), "red");
        assert_eq!(cell_of(&table, 0, "Last"), "blue");
        assert_eq!(cell_of(&table, 0, "Escaped"), "vmetal");
    }

    #[test]
    fn date_cells_handle_bad_and_empty_timestamps() {
        assert_eq!(cell("date", Some(&json!("not a time")), now()), "<invalid>");
        assert_eq!(cell("date", Some(&json!("")), now()), "<unknown>");
        assert_eq!(
            cell("date", Some(&json!("2025-06-01T12:00:10Z")), now()),
            "<invalid>"
        );
        assert_eq!(cell("date", Some(&json!(5)), now()), Value::Null);
    }

    #[test]
    fn human_duration_follows_apimachinery() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 25 * 60, "3h25m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (7 * 86400 + 5 * 3600, "7d5h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (365 * 3 * 86400 + 10 * 86400, "3y10d"),
            (365 * 9 * 86400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(seconds)),
                expected,
                "{seconds}s"
            );
        }
    }

    #[test]
    fn table_accept_detection() {
        assert!(parse_table_accept(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(parse_table_accept(
            "application/json; as=Table; g=meta.k8s.io; v=v1"
        ));
        assert!(!parse_table_accept("application/json"));
        assert!(!parse_table_accept(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        ));
        assert!(!parse_table_accept(
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
        ));
        assert!(!parse_table_accept(
            "application/yaml;as=Table;v=v1;g=meta.k8s.io"
        ));
        assert!(!parse_table_accept(""));
    }

    #[test]
    fn include_object_parsing_defaults_to_metadata() {
        assert_eq!(parse_include_object(None), IncludeObject::Metadata);
        assert_eq!(parse_include_object(Some("None")), IncludeObject::None);
        assert_eq!(parse_include_object(Some("Object")), IncludeObject::Object);
        assert_eq!(
            parse_include_object(Some("Metadata")),
            IncludeObject::Metadata
        );
        assert_eq!(parse_include_object(Some("bogus")), IncludeObject::Metadata);
    }

    #[test]
    fn default_columns_are_just_age() {
        let columns = default_columns();
        assert_eq!(columns.len(), 1);
        let object =
            json!({"metadata": {"name": "cm", "creationTimestamp": "2025-05-31T12:00:00Z"}});
        let table = render_table(&columns, &[object], IncludeObject::None, now(), "3", None);
        assert_eq!(column_names(&table), ["Name", "Age"]);
        assert_eq!(cell_of(&table, 0, "Age"), "24h");
    }

    #[test]
    fn json_path_checks_and_lookups() {
        assert!(check_json_path(".status.provisioning.state").is_ok());
        assert!(check_json_path("{.a[0].b}").is_ok());
        assert!(check_json_path("$.a").is_ok());
        assert!(check_json_path("status").is_err());
        assert!(check_json_path(".a[").is_err());
        assert!(check_json_path(".a[x]").is_err());
        assert!(check_json_path("{.a").is_err());
        assert!(check_json_path("").is_err());
        let error = check_json_path(".a..b").unwrap_err();
        assert!(error.to_string().contains(".a..b"), "{error}");

        let object = json!({"a": [{"b": 1}, {"b": 2}], "m": {"k": {"v": "x"}}});
        assert_eq!(json_path_value(&object, ".a[1].b"), Some(&json!(2)));
        assert_eq!(json_path_value(&object, ".a[*].b"), Some(&json!(1)));
        assert_eq!(json_path_value(&object, ".m.*.v"), Some(&json!("x")));
        assert_eq!(json_path_value(&object, ".a[5].b"), None);
        assert_eq!(json_path_value(&object, ".a[-9].b"), None);
        assert_eq!(json_path_value(&object, ".a.b"), None);
    }
}

//! HTTP handlers for objects: path and query parsing, content negotiation (JSON, YAML, Table),
//! and mapping each request to the object semantics in [`crate::objects`].
//!
//! Paths: `/api/v1[/namespaces/{ns}]/{plural}[/{name}[/{sub}]]` and the same under
//! `/apis/{group}/{version}`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::objects::{DeleteOptions, ListOptions, Objects, Target};
use crate::patch::PatchKind;
use crate::{table, watch};

/// Largest request body accepted (kube-apiserver's limit is 3 MiB as well).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Parsed query parameters.
#[derive(Debug, Default)]
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(uri: &Uri) -> Self {
        let pairs = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Self { pairs }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | ""))
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolve the path to a target, or `None` when it is not an object path.
fn resolve(objects: &Objects, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let no_route = || ApiError::NoRoute(path.to_string());
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(no_route()),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => (
            Some(*ns),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(no_route()),
    };
    if rest.len() > 5 {
        return Err(no_route());
    }
    let info = objects.find(group, version, plural).ok_or_else(no_route)?;
    if let Some(s) = sub
        && !(s == "status" && info.status_subresource)
        && !(s == "finalize" && plural == "namespaces")
    {
        return Err(no_route());
    }
    if namespace.is_some() && !info.namespaced {
        return Err(no_route());
    }
    Ok(Target {
        info,
        namespace: namespace.map(String::from),
        name: name.map(String::from),
        subresource: sub.map(String::from),
    })
}

fn list_options(q: &Query) -> Result<ListOptions, ApiError> {
    let label_selector = match q.get("labelSelector").filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(
            vmetal_api::selector::parse_selector(s)
                .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?,
        ),
        None => None,
    };
    let mut field_selector = Vec::new();
    if let Some(s) = q.get("fieldSelector").filter(|s| !s.trim().is_empty()) {
        for term in s.split(',') {
            let (path, equals, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector {s:?}: term {term:?} is not of the form field=value or field!=value"
                )));
            };
            field_selector.push((path.trim().to_string(), equals, value.trim().to_string()));
        }
    }
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => Some(l.parse::<usize>().map_err(|_| {
            ApiError::BadRequest(format!("limit {l:?} is not a non-negative integer"))
        })?),
        None => None,
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: q
            .get("continue")
            .filter(|s| !s.is_empty())
            .map(String::from),
    })
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge(MAX_BODY_BYTES));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let value: Value = if ct.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}")))?
    } else if ct.contains("json") || ct.is_empty() {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "application/json, application/yaml".into(),
        ));
    };
    Ok(value)
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::parse_table_accept)
}

fn table_response(
    target: &Target,
    q: &Query,
    items: &[Value],
    rv: u64,
    continue_token: Option<&str>,
) -> Response {
    let columns = if target.info.printer_columns.is_empty() {
        table::default_columns()
    } else {
        target.info.printer_columns.clone()
    };
    let include = table::parse_include_object(q.get("includeObject"));
    let doc = table::render_table(
        &columns,
        items,
        include,
        k8s_openapi::jiff::Timestamp::now(),
        &rv.to_string(),
        continue_token,
    );
    Json(doc).into_response()
}

/// Handle one object request.
pub async fn handle(
    objects: Objects,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&objects, &method, &uri, &headers, &body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn dispatch(
    objects: &Objects,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let target = resolve(objects, uri.path())?;
    let q = Query::parse(uri);
    let dry_run = q.dry_run();
    match (method.clone(), target.name.is_some()) {
        (Method::GET, false) => {
            let list = list_options(&q)?;
            if q.flag("watch") {
                let rv = match q.get("resourceVersion").filter(|s| !s.is_empty()) {
                    Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))
                    })?),
                    None => None,
                };
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let rx = watch::start(
                    objects,
                    &target,
                    list,
                    watch::WatchOptions {
                        resource_version: rv,
                        bookmarks: q.flag("allowWatchBookmarks"),
                        send_initial_events: q.get("sendInitialEvents") == Some("true"),
                        timeout,
                        table: wants_table(headers).then(|| {
                            let columns = if target.info.printer_columns.is_empty() {
                                table::default_columns()
                            } else {
                                target.info.printer_columns.clone()
                            };
                            (columns, table::parse_include_object(q.get("includeObject")))
                        }),
                    },
                );
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from_stream(watch::body_stream(rx)),
                )
                    .into_response());
            }
            let page = objects.list(&target, &list)?;
            let (items, rev, cont, remaining) = (
                page.items,
                page.resource_version,
                page.continue_token,
                page.remaining,
            );
            if wants_table(headers) {
                return Ok(table_response(&target, &q, &items, rev, cont.as_deref()));
            }
            let mut meta = json!({ "resourceVersion": rev.to_string() });
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            if let Some(r) = remaining {
                meta["remainingItemCount"] = json!(r);
            }
            Ok(Json(json!({
                "kind": format!("{}List", target.info.kind),
                "apiVersion": target.info.group_version(),
                "metadata": meta,
                "items": items,
            }))
            .into_response())
        }
        (Method::GET, true) => {
            let obj = objects.get(&target)?;
            if wants_table(headers) {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok(table_response(&target, &q, &[obj], rv, None));
            }
            Ok(Json(obj).into_response())
        }
        (Method::POST, false) => {
            let obj = parse_body(headers, body)?;
            let created = objects.create(&target, obj, dry_run)?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        (Method::PUT, true) => {
            let obj = parse_body(headers, body)?;
            Ok(Json(objects.update(&target, obj, dry_run)?).into_response())
        }
        (Method::PATCH, true) => {
            if body.len() > MAX_BODY_BYTES {
                return Err(ApiError::TooLarge(MAX_BODY_BYTES));
            }
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(ct).ok_or_else(|| {
                ApiError::UnsupportedMediaType(
                    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".into(),
                )
            })?;
            let existed = objects.get(&target).is_ok();
            let out = objects.patch(
                &target,
                kind,
                body,
                q.get("fieldManager"),
                q.flag("force"),
                dry_run,
            )?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((code, Json(out)).into_response())
        }
        (Method::DELETE, named) => {
            let opts = delete_options(&q, body)?;
            if !named {
                let list = list_options(&q)?;
                objects.delete_collection(&target, &list, &opts, dry_run)?;
                return Ok(Json(success(&target, None)).into_response());
            }
            let (pending, obj) = objects.delete(&target, &opts, dry_run)?;
            match pending {
                Some(marked) => Ok((StatusCode::OK, Json(marked)).into_response()),
                None => Ok(Json(success(&target, Some(&obj))).into_response()),
            }
        }
        (m, _) => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow method {m} on {}",
            uri.path()
        ))),
    }
}

fn success(target: &Target, obj: Option<&Value>) -> Value {
    let mut details = json!({ "group": target.info.group, "kind": target.info.plural });
    if let Some(o) = obj {
        details["name"] = o.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
        details["uid"] = o.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    }
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details })
}

fn delete_options(q: &Query, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let mut policy = q.get("propagationPolicy").map(String::from);
    let mut opts = DeleteOptions::default();
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            policy = Some(p.to_string());
        }
        opts.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        opts.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
    }
    opts.orphan = policy.as_deref() == Some("Orphan");
    Ok(opts)
}

//! Bad requests get the right HTTP status and a `Status` body, and nothing a client sends can
//! make the server panic or answer 500.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;
use vmetal_apiserver::objects::Objects;
use vmetal_apiserver::server::{install_crds, router};
use vmetal_apiserver::store::Store;
use vmetal_apiserver::{Registry, http::MAX_BODY_BYTES};

fn app() -> axum::Router {
    let objects = Objects::new(
        Arc::new(Store::in_memory()),
        Arc::new(RwLock::new(Registry::with_builtins())),
    );
    objects.ensure_namespaces(&["default"]).unwrap();
    install_crds(&objects, &vmetal_api::crds::all()).unwrap();
    router(objects, "127.0.0.1:6443".into(), None)
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    ct: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const BMH: &str = "/apis/metal3.io/v1alpha1/namespaces/default/baremetalhosts";

fn host(name: &str) -> Value {
    json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
           "metadata": {"name": name}, "spec": {"online": true}})
}

#[tokio::test]
#[allow(clippy::type_complexity)]
async fn each_kind_of_bad_request_gets_its_status() {
    let app = app();
    let json_ct = "application/json";
    let cases: Vec<(&str, Method, String, &str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", Method::POST, BMH.into(), json_ct, b"{\"kind\":".to_vec(), 400, "BadRequest"),
        ("malformed YAML", Method::POST, BMH.into(), "application/yaml", b"a: [1, 2\n b".to_vec(), 400, "BadRequest"),
        ("not an object", Method::POST, BMH.into(), json_ct, b"[1,2]".to_vec(), 400, "BadRequest"),
        ("unknown kind", Method::GET, "/apis/metal3.io/v1alpha1/namespaces/default/widgets".into(), json_ct, vec![], 404, "NotFound"),
        ("unknown group", Method::GET, "/apis/nope.io/v1/things".into(), json_ct, vec![], 404, "NotFound"),
        ("wrong apiVersion", Method::POST, BMH.into(), json_ct,
            serde_json::to_vec(&json!({"apiVersion": "metal3.io/v1beta9", "kind": "BareMetalHost", "metadata": {"name": "x"}, "spec": {"online": true}})).unwrap(), 400, "BadRequest"),
        ("wrong kind", Method::POST, BMH.into(), json_ct,
            serde_json::to_vec(&json!({"apiVersion": "metal3.io/v1alpha1", "kind": "Machine", "metadata": {"name": "x"}})).unwrap(), 400, "BadRequest"),
        ("name differs from URL", Method::PUT, format!("{BMH}/h1"), json_ct,
            serde_json::to_vec(&json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "other", "resourceVersion": "1"}, "spec": {"online": true}})).unwrap(), 400, "BadRequest"),
        ("oversized body", Method::POST, BMH.into(), json_ct, vec![b' '; MAX_BODY_BYTES + 10], 413, ""),
        ("invalid label selector", Method::GET, format!("{BMH}?labelSelector=a%20in%20("), json_ct, vec![], 400, "BadRequest"),
        ("invalid field selector", Method::GET, format!("{BMH}?fieldSelector=justaword"), json_ct, vec![], 400, "BadRequest"),
        ("invalid name", Method::POST, BMH.into(), json_ct, serde_json::to_vec(&host("Bad_Name")).unwrap(), 422, "Invalid"),
        ("schema violation", Method::POST, BMH.into(), json_ct,
            serde_json::to_vec(&json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "x"}, "spec": {"online": "yes"}})).unwrap(), 422, "Invalid"),
        ("missing namespace", Method::POST, "/apis/metal3.io/v1alpha1/namespaces/ghost/baremetalhosts".into(), json_ct, serde_json::to_vec(&host("x")).unwrap(), 404, "NotFound"),
        ("unsupported patch type", Method::PATCH, format!("{BMH}/h1"), "text/plain", b"{}".to_vec(), 415, "UnsupportedMediaType"),
        ("update without resourceVersion", Method::PUT, format!("{BMH}/h1"), json_ct, serde_json::to_vec(&host("h1")).unwrap(), 422, "Invalid"),
        ("update of a missing object", Method::PUT, format!("{BMH}/zz"), json_ct,
            serde_json::to_vec(&json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "zz", "resourceVersion": "3"}, "spec": {"online": true}})).unwrap(), 404, "NotFound"),
        ("watch from a bad resourceVersion", Method::GET, format!("{BMH}?watch=1&resourceVersion=abc"), json_ct, vec![], 400, "BadRequest"),
    ];
    let (s, _) = call(
        &app,
        Method::POST,
        BMH,
        json_ct,
        serde_json::to_vec(&host("h1")).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for (what, method, uri, ct, body, code, reason) in cases {
        let (status, body) = call(&app, method, &uri, ct, body).await;
        assert_eq!(status.as_u16(), code, "{what}: {body}");
        if !reason.is_empty() {
            assert_eq!(body["kind"], "Status", "{what}: {body}");
            assert_eq!(body["reason"], reason, "{what}: {body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn invalid_objects_name_the_field() {
    let app = app();
    let bad = json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {"name": "h2"}, "spec": {"online": true, "bootMode": "bios"}});
    let (status, body) = call(
        &app,
        Method::POST,
        BMH,
        "application/json",
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("spec.bootMode"), "{message}");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.bootMode");
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_gone() {
    let objects = Objects::new(
        Arc::new(Store::in_memory()),
        Arc::new(RwLock::new(Registry::with_builtins())),
    );
    objects.ensure_namespaces(&["default"]).unwrap();
    let store = objects.store().clone();
    let app = router(objects, "x".into(), None);
    for i in 0..(vmetal_apiserver::store::HISTORY_LIMIT + 5) {
        let cm = json!({"metadata": {"name": format!("c{}", i % 3)}, "data": {"i": i.to_string()}});
        let uri = "/api/v1/namespaces/default/configmaps";
        let (s, _) = call(
            &app,
            Method::POST,
            uri,
            "application/json",
            serde_json::to_vec(&cm).unwrap(),
        )
        .await;
        if s == StatusCode::CONFLICT {
            let name = format!("c{}", i % 3);
            let (_, cur) = call(&app, Method::GET, &format!("{uri}/{name}"), "", vec![]).await;
            let mut next = cm.clone();
            next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            call(
                &app,
                Method::PUT,
                &format!("{uri}/{name}"),
                "application/json",
                serde_json::to_vec(&next).unwrap(),
            )
            .await;
        }
    }
    assert!(store.compacted() > 1);
    let req = Request::builder()
        .uri("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let mut stream = resp.into_body().into_data_stream();
    use futures::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    let event: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Arbitrary bodies on every write verb never panic the server or produce a 500.
    #[test]
    fn arbitrary_bodies_never_break_the_server(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "\\PC{0,200}".prop_map(|s| s.into_bytes()),
            Just(br#"{"apiVersion":"metal3.io/v1alpha1","kind":"BareMetalHost","metadata":{"name":"p"},"spec":{"online":1,"bmc":[]}}"#.to_vec()),
            Just(br#"[{"op":"replace","path":"/spec/x/y/z","value":1}]"#.to_vec()),
            Just(br#"{"metadata":{"name":null,"labels":{"a":5}},"status":7}"#.to_vec()),
        ],
        method in prop_oneof![Just(Method::POST), Just(Method::PUT), Just(Method::PATCH), Just(Method::DELETE)],
        ct in prop_oneof![
            Just("application/json"), Just("application/yaml"), Just("application/merge-patch+json"),
            Just("application/json-patch+json"), Just("application/strategic-merge-patch+json"),
            Just("application/apply-patch+yaml"),
        ],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let app = app();
            call(&app, Method::POST, BMH, "application/json", serde_json::to_vec(&host("h1")).unwrap()).await;
            let uri = if method == Method::POST { BMH.to_string() } else { format!("{BMH}/h1?fieldManager=fuzz") };
            let (status, _) = call(&app, method, &uri, ct, body).await;
            prop_assert!(status.as_u16() < 500, "server error {status}");
            Ok(())
        })?;
    }
}

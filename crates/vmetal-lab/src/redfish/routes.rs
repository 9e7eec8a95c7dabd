//! The virtual BMC's HTTP surface: the axum router, a guard that injects faults and checks
//! credentials, and thin handlers over [`resources`](super::resources) and [`actions`](super::actions).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::RedfishConfig;
use super::actions::{self, Refusal};
use super::auth::{self, Sessions};
use super::resources::{self, CD, FLOPPY, ROOT, SESSIONS};
use crate::faults::FaultAction;
use crate::sim::SimulatedServer;

/// How long a "dropped" request is held before its connection is closed unanswered: longer
/// than any client timeout a test uses.
const DROP_HOLD: Duration = Duration::from_secs(30);

/// Everything the handlers share.
pub(crate) struct Service {
    pub systems: Vec<SimulatedServer>,
    pub config: RedfishConfig,
    pub sessions: Sessions,
    /// Status for injected `Fail` faults (500 unless a test asks for 503).
    pub fail_status: AtomicU16,
    pub uuid: String,
}

impl Service {
    fn server(&self, id: &str) -> Option<&SimulatedServer> {
        self.systems.iter().find(|s| s.identity().id == id)
    }
}

type Shared = State<Arc<Service>>;

/// The router of one virtual Redfish service.
pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/redfish", get(versions))
        .route("/redfish/", get(versions))
        .route("/redfish/v1", get(service_root))
        .route("/redfish/v1/", get(service_root))
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/{id}", get(system).patch(patch_system))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .route("/redfish/v1/Managers", get(managers))
        .route("/redfish/v1/Managers/{id}", get(manager))
        .route(
            "/redfish/v1/Managers/{id}/VirtualMedia",
            get(media_collection),
        )
        .route(
            "/redfish/v1/Managers/{id}/VirtualMedia/{device}",
            get(media).patch(patch_media),
        )
        .route(
            "/redfish/v1/Managers/{id}/VirtualMedia/{device}/Actions/VirtualMedia.InsertMedia",
            post(insert_media),
        )
        .route(
            "/redfish/v1/Managers/{id}/VirtualMedia/{device}/Actions/VirtualMedia.EjectMedia",
            post(eject_media),
        )
        .route("/redfish/v1/SessionService", get(session_service))
        .route(
            "/redfish/v1/SessionService/Sessions",
            get(sessions).post(login),
        )
        .route(
            "/redfish/v1/SessionService/Sessions/{sid}",
            get(session).delete(logout),
        )
        .fallback(not_found_fallback)
        .layer(middleware::from_fn_with_state(service.clone(), guard))
        .with_state(service)
}

/// Faults of the addressed system first (a sick BMC is sick for everyone), then credentials.
async fn guard(State(service): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if let Some(server) = addressed_system(&path).and_then(|id| service.server(id)) {
        let latency = server.faults().latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match server.faults().decide() {
            FaultAction::Proceed => {}
            FaultAction::Fail => {
                let status = StatusCode::from_u16(service.fail_status.load(Ordering::Relaxed))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return error(
                    status,
                    "InternalError",
                    "The request failed (injected fault).",
                );
            }
            FaultAction::Busy => {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceTemporarilyUnavailable",
                    "The service is temporarily unavailable. Retry in 1 seconds.",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            FaultAction::Drop => {
                let connection = request
                    .extensions()
                    .get::<axum_server::ConnectionShutdown>()
                    .cloned();
                tokio::time::sleep(DROP_HOLD).await;
                if let Some(connection) = connection {
                    connection.shutdown();
                }
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    }
    if !is_public(request.method(), &path) && !authorized(&service, request.headers()) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "NoValidSession",
            "There is no valid session established with the implementation.",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"vmetal lab Redfish\""),
        );
        return response;
    }
    next.run(request).await
}

/// The system id a path addresses (`/Systems/<id>...` or its manager `/Managers/<id>...`).
fn addressed_system(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/redfish/v1/Systems/")
        .or_else(|| path.strip_prefix("/redfish/v1/Managers/"))?;
    rest.split('/').next().filter(|id| !id.is_empty())
}

/// The service root and the login endpoint need no credentials (DMTF DSP0266).
fn is_public(method: &Method, path: &str) -> bool {
    matches!(
        path,
        "/redfish" | "/redfish/" | "/redfish/v1" | "/redfish/v1/"
    ) || (method == Method::POST && path.trim_end_matches('/') == SESSIONS)
}

fn authorized(service: &Service, headers: &HeaderMap) -> bool {
    if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return service.sessions.lookup(token).is_some();
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::parse_basic)
        .is_some_and(|(user, password)| {
            auth::credentials_match(
                &user,
                &password,
                &service.config.username,
                &service.config.password,
            )
        })
}

async fn versions() -> Response {
    json(StatusCode::OK, resources::versions())
}

async fn service_root(State(service): Shared) -> Response {
    json(StatusCode::OK, resources::service_root(&service.uuid))
}

async fn systems(State(service): Shared) -> Response {
    let members: Vec<String> = service
        .systems
        .iter()
        .map(|s| resources::system_path(&s.identity().id))
        .collect();
    json(
        StatusCode::OK,
        resources::collection(
            &format!("{ROOT}/Systems"),
            "#ComputerSystemCollection.ComputerSystemCollection",
            "Computer System Collection",
            &members,
        ),
    )
}

async fn system(State(service): Shared, Path(id): Path<String>) -> Response {
    match service.server(&id) {
        Some(server) => with_etag(resources::system(server)),
        None => not_found(),
    }
}

async fn patch_system(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(server) = service.server(&id) else {
        return not_found();
    };
    let outcome = if_match(&headers, &resources::system(server))
        .and_then(|()| parse(&body))
        .and_then(|body| actions::patch_system(server, &body));
    done(outcome)
}

async fn reset(State(service): Shared, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(server) = service.server(&id) else {
        return not_found();
    };
    done(parse(&body).and_then(|body| actions::reset(server, &body)))
}

async fn managers(State(service): Shared) -> Response {
    let members: Vec<String> = service
        .systems
        .iter()
        .map(|s| resources::manager_path(&s.identity().id))
        .collect();
    json(
        StatusCode::OK,
        resources::collection(
            &format!("{ROOT}/Managers"),
            "#ManagerCollection.ManagerCollection",
            "Manager Collection",
            &members,
        ),
    )
}

async fn manager(State(service): Shared, Path(id): Path<String>) -> Response {
    match service.server(&id) {
        Some(_) => json(StatusCode::OK, resources::manager(&id)),
        None => not_found(),
    }
}

async fn media_collection(State(service): Shared, Path(id): Path<String>) -> Response {
    match service.server(&id) {
        Some(_) => json(StatusCode::OK, resources::media_collection(&id)),
        None => not_found(),
    }
}

async fn media(State(service): Shared, Path((id, device)): Path<(String, String)>) -> Response {
    match (service.server(&id), device.as_str()) {
        (Some(server), CD) => with_etag(resources::cd(server)),
        (Some(_), FLOPPY) => json(StatusCode::OK, resources::floppy(&id)),
        _ => not_found(),
    }
}

async fn patch_media(
    State(service): Shared,
    Path((id, device)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match (service.server(&id), device.as_str()) {
        (Some(server), CD) => done(
            if_match(&headers, &resources::cd(server))
                .and_then(|()| parse(&body))
                .and_then(|body| actions::insert_media(server, &body)),
        ),
        (Some(_), FLOPPY) => error(
            StatusCode::BAD_REQUEST,
            "PropertyNotWritable",
            "The virtual floppy drive is read only.",
        ),
        _ => not_found(),
    }
}

async fn insert_media(
    State(service): Shared,
    Path((id, device)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match (service.server(&id), device.as_str()) {
        (Some(server), CD) => {
            done(parse(&body).and_then(|body| actions::insert_media(server, &body)))
        }
        _ => not_found(),
    }
}

async fn eject_media(
    State(service): Shared,
    Path((id, device)): Path<(String, String)>,
) -> Response {
    match (service.server(&id), device.as_str()) {
        (Some(server), CD) => {
            server.eject_media();
            StatusCode::NO_CONTENT.into_response()
        }
        _ => not_found(),
    }
}

async fn session_service() -> Response {
    json(StatusCode::OK, resources::session_service())
}

async fn sessions(State(service): Shared) -> Response {
    let members: Vec<String> = service
        .sessions
        .ids()
        .iter()
        .map(|id| format!("{SESSIONS}/{id}"))
        .collect();
    json(
        StatusCode::OK,
        resources::collection(
            SESSIONS,
            "#SessionCollection.SessionCollection",
            "Session Collection",
            &members,
        ),
    )
}

async fn login(State(service): Shared, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(body) => body,
        Err(refusal) => return refused(refusal),
    };
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    let (user, password) = (field("UserName"), field("Password"));
    if !auth::credentials_match(
        user,
        password,
        &service.config.username,
        &service.config.password,
    ) {
        return error(
            StatusCode::UNAUTHORIZED,
            "InsufficientPrivilege",
            "The user name or password is not valid.",
        );
    }
    let (id, token) = service.sessions.open(user);
    let mut response = json(StatusCode::CREATED, resources::session(&id, user));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert("x-auth-token", value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("{SESSIONS}/{id}")) {
        headers.insert(header::LOCATION, value);
    }
    response
}

async fn session(State(service): Shared, Path(sid): Path<String>) -> Response {
    match service.sessions.user_of(&sid) {
        Some(user) => json(StatusCode::OK, resources::session(&sid, &user)),
        None => not_found(),
    }
}

async fn logout(State(service): Shared, Path(sid): Path<String>) -> Response {
    if service.sessions.close(&sid) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    }
}

async fn not_found_fallback() -> Response {
    not_found()
}

/// `If-Match` must name the current ETag (or `*`) when present.
fn if_match(headers: &HeaderMap, current: &Value) -> Result<(), Refusal> {
    let Some(wanted) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let current = resources::etag_of(current).unwrap_or_default();
    if wanted
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == current)
    {
        Ok(())
    } else {
        Err(Refusal {
            status: StatusCode::PRECONDITION_FAILED,
            message_id: "PreconditionFailed",
            message: "The ETag supplied did not match the ETag required to change this resource."
                .into(),
        })
    }
}

fn parse(body: &[u8]) -> Result<Value, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        message_id: "MalformedJSON",
        message: format!("The request body submitted was malformed JSON: {e}"),
    })
}

fn done(outcome: Result<(), Refusal>) -> Response {
    match outcome {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refused(refusal),
    }
}

fn refused(refusal: Refusal) -> Response {
    error(refusal.status, refusal.message_id, &refusal.message)
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The requested resource was not found.",
    )
}

fn error(status: StatusCode, message_id: &str, message: &str) -> Response {
    json(status, resources::error(message_id, message))
}

/// A JSON response with the content type and OData version Redfish clients expect.
fn json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert("odata-version", HeaderValue::from_static("4.0"));
    response
}

/// A JSON response carrying the document's `@odata.etag` as `ETag` too.
fn with_etag(body: Value) -> Response {
    let etag = resources::etag_of(&body);
    let mut response = json(StatusCode::OK, body);
    if let Some(value) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_follow_the_addressed_system() {
        assert_eq!(addressed_system("/redfish/v1/Systems/7"), Some("7"));
        assert_eq!(
            addressed_system("/redfish/v1/Managers/7/VirtualMedia/Cd"),
            Some("7")
        );
        assert_eq!(addressed_system("/redfish/v1/Systems"), None);
        assert_eq!(
            addressed_system("/redfish/v1/SessionService/Sessions"),
            None
        );
    }

    #[test]
    fn only_root_and_login_are_public() {
        assert!(is_public(&Method::GET, "/redfish/v1/"));
        assert!(is_public(&Method::POST, SESSIONS));
        assert!(!is_public(&Method::GET, SESSIONS));
        assert!(!is_public(&Method::GET, "/redfish/v1/Systems"));
    }
}

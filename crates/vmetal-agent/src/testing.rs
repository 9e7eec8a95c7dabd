//! A scripted stand-in for the controller's agent API plus an image server, for tests of the
//! agent and of simulated servers (feature `testing`). Not for production use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use vmetal_api::agent::{
    AgentCommand, CommandResult, Heartbeat, HeartbeatResponse, HostIdentity, LookupRequest,
    LookupResponse,
};

/// What the fake API has seen and will say.
#[derive(Debug, Default)]
struct FakeState {
    macs: Vec<String>,
    script: Vec<AgentCommand>,
    next: usize,
    cycle: u32,
    token: Option<String>,
    issued: bool,
    lookups: usize,
    heartbeats: Vec<Heartbeat>,
    rejected: usize,
    files: HashMap<String, Vec<u8>>,
    heartbeat_interval_ms: u64,
}

/// A running fake agent API (`/v1/lookup`, `/v1/heartbeat`) and file server (`/files/<name>`).
///
/// It hands out one token per script and walks the script: a command with an id is repeated
/// until a heartbeat reports its result (`wait` while the agent reports it running), a scripted
/// `wait` is given once, and after the script `finish`.
#[derive(Debug, Clone)]
pub struct FakeAgentApi {
    state: Arc<Mutex<FakeState>>,
    /// Base URL (`http://127.0.0.1:port`).
    pub url: String,
}

fn lock(m: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeAgentApi {
    /// Start serving on an ephemeral localhost port, answering lookups from `macs`.
    pub async fn start(macs: &[&str]) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(FakeState {
            macs: macs.iter().map(|m| m.to_ascii_lowercase()).collect(),
            heartbeat_interval_ms: 20,
            ..Default::default()
        }));
        let app = axum::Router::new()
            .route("/v1/lookup", post(lookup))
            .route("/v1/heartbeat", post(heartbeat))
            .route("/files/{name}", get(file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { state, url })
    }

    /// Start a new cycle that runs `script`: a fresh token, lookups succeed again.
    pub fn set_script(&self, script: Vec<AgentCommand>) {
        let mut st = lock(&self.state);
        st.cycle += 1;
        st.script = script;
        st.next = 0;
        st.issued = false;
        st.token = Some(format!("token-{}", st.cycle));
    }

    /// Serve `data` at `<url>/files/<name>`; returns that URL.
    pub fn add_file(&self, name: &str, data: Vec<u8>) -> String {
        lock(&self.state).files.insert(name.to_string(), data);
        format!("{}/files/{name}", self.url)
    }

    /// Every heartbeat received with a valid token, oldest first.
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        lock(&self.state).heartbeats.clone()
    }

    /// The results of the latest heartbeat of the current cycle.
    pub fn results(&self) -> Vec<CommandResult> {
        let st = lock(&self.state);
        let cycle = format!("cycle-{}", st.cycle);
        st.heartbeats
            .iter()
            .rev()
            .find(|h| h.cycle == cycle)
            .map(|h| h.results.clone())
            .unwrap_or_default()
    }

    /// The result of command `id` in the current cycle, once reported.
    pub fn result(&self, id: &str) -> Option<CommandResult> {
        self.results().into_iter().find(|r| r.id == id)
    }

    /// Whether the current script has been walked to `finish`.
    pub fn finished(&self) -> bool {
        let st = lock(&self.state);
        st.issued && st.next >= st.script.len()
    }

    /// Number of lookups served (any answer).
    pub fn lookups(&self) -> usize {
        lock(&self.state).lookups
    }

    /// Number of heartbeats refused for a missing or wrong token.
    pub fn rejected(&self) -> usize {
        lock(&self.state).rejected
    }

    /// Replace the token the API expects, so the agent's token becomes wrong.
    pub fn revoke_token(&self) {
        lock(&self.state).token = Some("revoked".into());
    }
}

async fn lookup(
    State(state): State<Arc<Mutex<FakeState>>>,
    Json(req): Json<LookupRequest>,
) -> Response {
    let mut st = lock(&state);
    st.lookups += 1;
    let known = req
        .mac_addresses
        .iter()
        .any(|m| st.macs.contains(&m.to_ascii_lowercase()));
    let Some(token) = st.token.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    if st.issued {
        return StatusCode::FORBIDDEN.into_response();
    }
    st.issued = true;
    Json(LookupResponse {
        host: HostIdentity {
            namespace: "default".into(),
            name: "host-0".into(),
        },
        cycle: format!("cycle-{}", st.cycle),
        token,
        heartbeat_interval_ms: st.heartbeat_interval_ms,
    })
    .into_response()
}

fn command_id(c: &AgentCommand) -> Option<&str> {
    match c {
        AgentCommand::Inspect { id } | AgentCommand::Wipe { id, .. } => Some(id),
        AgentCommand::Deploy(d) => Some(&d.id),
        AgentCommand::Wait | AgentCommand::Finish => None,
    }
}

async fn heartbeat(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Response {
    let mut st = lock(&state);
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        st.rejected += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if st.token.as_deref() != Some(presented) {
        st.rejected += 1;
        return StatusCode::FORBIDDEN.into_response();
    }
    st.heartbeats.push(hb.clone());
    let command = loop {
        let Some(c) = st.script.get(st.next).cloned() else {
            break AgentCommand::Finish;
        };
        match command_id(&c) {
            Some(id) if hb.results.iter().any(|r| r.id == id) => st.next += 1,
            // No need to resend a (possibly large) command the agent is already running.
            Some(id) if hb.running.as_ref().is_some_and(|p| p.id == id) => {
                break AgentCommand::Wait;
            }
            Some(_) => break c,
            None => {
                st.next += 1;
                break c;
            }
        }
    };
    Json(HeartbeatResponse { command }).into_response()
}

async fn file(State(state): State<Arc<Mutex<FakeState>>>, Path(name): Path<String>) -> Response {
    match lock(&state).files.get(&name) {
        Some(data) => data.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

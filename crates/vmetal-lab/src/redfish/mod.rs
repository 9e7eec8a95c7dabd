//! Virtual Redfish BMC (axum, HTTP and HTTPS) in front of simulated servers: one service
//! serving each server as `/redfish/v1/Systems/<id>` with its own manager and virtual CD.

mod actions;
mod auth;
mod certs;
mod resources;
mod routes;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::task::JoinHandle;

use crate::sim::SimulatedServer;

/// How a virtual Redfish service accepts clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedfishConfig {
    /// The one account's user name.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Serve HTTPS with a certificate from a freshly generated CA (else plain HTTP).
    pub tls: bool,
}

/// The virtual Redfish BMC.
#[derive(Debug)]
pub struct RedfishService;

impl RedfishService {
    /// Serve `systems` on `bind` until the returned handle is dropped.
    pub async fn start(
        bind: SocketAddr,
        systems: Vec<SimulatedServer>,
        config: RedfishConfig,
    ) -> std::io::Result<RunningRedfish> {
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let tls = if config.tls {
            Some(certs::server_tls(local_addr.ip())?)
        } else {
            None
        };
        let service = Arc::new(routes::Service {
            uuid: SERVICE_UUID.to_string(),
            systems,
            config,
            sessions: auth::Sessions::default(),
            fail_status: AtomicU16::new(500),
        });
        let app = routes::router(service.clone()).into_make_service();
        let handle = axum_server::Handle::new();
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        let task = match tls {
            Some(tls) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.config);
                let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle.clone());
                tokio::spawn(async move {
                    if let Err(e) = server.serve(app).await {
                        tracing::warn!(error = %e, "virtual Redfish BMC stopped");
                    }
                })
            }
            None => {
                let server = axum_server::from_tcp(listener)?.handle(handle.clone());
                tokio::spawn(async move {
                    if let Err(e) = server.serve(app).await {
                        tracing::warn!(error = %e, "virtual Redfish BMC stopped");
                    }
                })
            }
        };
        tracing::info!(address = %local_addr, tls = ca_pem.is_some(), "virtual Redfish BMC serving");
        Ok(RunningRedfish {
            local_addr,
            ca_pem,
            service,
            handle,
            task,
        })
    }
}

/// A running virtual Redfish service; stops (closing every connection) when dropped.
pub struct RunningRedfish {
    local_addr: SocketAddr,
    ca_pem: Option<String>,
    service: Arc<routes::Service>,
    handle: axum_server::Handle<SocketAddr>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RunningRedfish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRedfish")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl RunningRedfish {
    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http(s)://host:port` to reach the service (loopback when bound to every address).
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let ip = match self.local_addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.local_addr.port()))
    }

    /// The PEM of the CA that signed the server certificate (HTTPS only), for clients that
    /// verify certificates.
    pub fn ca_certificate_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Answer injected `Fail` faults with `status` (500 by default; 503 models a BMC shedding
    /// load). Statuses that are not server errors are ignored.
    pub fn set_fail_status(&self, status: u16) {
        if (500..600).contains(&status) {
            self.service.fail_status.store(status, Ordering::Relaxed);
        }
    }

    /// Number of open Redfish sessions (tests check that clients log out).
    pub fn open_sessions(&self) -> usize {
        self.service.sessions.ids().len()
    }
}

impl Drop for RunningRedfish {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.task.abort();
    }
}

/// The service root's UUID: fixed, so every lab run looks like the same BMC.
const SERVICE_UUID: &str = "7d3b6a0e-6c5f-4d0b-9e1a-0000000005e7";

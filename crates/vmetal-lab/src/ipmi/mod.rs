//! Virtual IPMI lanplus BMC (UDP) in front of a simulated server.
//! The socket loop is thin: faults and latency here, the protocol in [`handler`].

pub mod dispatch;
pub mod handler;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::faults::FaultAction;
use crate::sim::SimulatedServer;
pub use handler::Handler;

/// Largest datagram read; IPMI LAN packets are far smaller.
const MAX_DATAGRAM: usize = 2048;

/// Starts virtual IPMI BMCs.
#[derive(Debug, Clone, Copy)]
pub struct IpmiService;

/// A running virtual IPMI BMC; stops when dropped.
#[derive(Debug)]
pub struct RunningIpmi {
    local_addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl IpmiService {
    /// Serve IPMI lanplus on `bind` (UDP) for `server`, accepting `username`/`password`.
    /// Consults the server's fault injector for every datagram.
    pub async fn start(
        bind: SocketAddr,
        server: SimulatedServer,
        username: String,
        password: String,
    ) -> io::Result<RunningIpmi> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let local_addr = socket.local_addr()?;
        let handler = Handler::new(server.clone(), username, password);
        let task = tokio::spawn(serve(socket, server, handler));
        Ok(RunningIpmi {
            local_addr,
            task: Some(task),
        })
    }
}

impl RunningIpmi {
    /// The UDP address the BMC listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop serving and wait until the port is free again.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for RunningIpmi {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(socket: Arc<UdpSocket>, server: SimulatedServer, mut handler: Handler) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                // ICMP errors for earlier replies surface here; nothing to do but go on.
                tracing::trace!(error = %e, "virtual IPMI BMC receive error");
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let fault = server.faults().decide();
        if fault == FaultAction::Drop {
            continue;
        }
        let Some(reply) = handler.handle(&buf[..len], peer, fault, Instant::now()) else {
            continue;
        };
        let latency = server.faults().latency();
        if latency.is_zero() {
            let _ = socket.send_to(&reply, peer).await;
        } else {
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let _ = socket.send_to(&reply, peer).await;
            });
        }
    }
}

//! The read-only TFTP server: one listening socket, one task and one ephemeral socket per
//! transfer, lock-step DATA/ACK with retransmission.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

use super::packet::{self, Packet, error_code};
use crate::dhcp::server::bind_udp;
use crate::error::BootError;
use crate::metrics::Metrics;

/// Retransmissions of one packet before a transfer is abandoned.
pub const MAX_RETRIES: u32 = 5;

/// TFTP server settings.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// The directory served; canonicalised at start.
    pub root: PathBuf,
    /// Interface transfer sockets bind to, if any.
    pub interface: Option<String>,
    /// Retransmission timeout when the client asks for none.
    pub default_timeout_secs: u8,
}

/// Checks the root and returns its canonical form.
pub fn canonical_root(root: &Path) -> Result<PathBuf, BootError> {
    let canonical = root.canonicalize().map_err(|source| BootError::TftpRoot {
        path: root.to_path_buf(),
        source,
    })?;
    if !canonical.is_dir() {
        return Err(BootError::TftpRoot {
            path: root.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    Ok(canonical)
}

/// Serves read requests arriving on `socket` until the task is dropped.
pub async fn serve(
    socket: UdpSocket,
    config: TftpConfig,
    metrics: Metrics,
) -> Result<(), BootError> {
    let root = Arc::new(canonical_root(&config.root)?);
    let config = Arc::new(config);
    let mut buf = vec![0u8; 1024];
    loop {
        let (len, peer) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|source| BootError::Io {
                what: "TFTP",
                source,
            })?;
        let SocketAddr::V4(peer) = peer else { continue };
        let datagram = buf.get(..len).unwrap_or(&[]);
        match packet::parse(datagram) {
            Ok(Packet::Rrq {
                filename,
                mode: _,
                options,
            }) => {
                let (root, config, metrics) = (root.clone(), config.clone(), metrics.clone());
                tokio::spawn(async move {
                    let result =
                        transfer(peer, &filename, &options, &root, &config, &metrics).await;
                    let label = match &result {
                        Ok(_) => "ok",
                        Err(Failure::NotFound) => "not_found",
                        Err(Failure::Denied) => "denied",
                        Err(Failure::Timeout) => "timeout",
                        Err(Failure::Aborted) => "aborted",
                        Err(Failure::Io(e)) => {
                            tracing::warn!(%peer, error = %e, "TFTP: I/O error");
                            "error"
                        }
                    };
                    Metrics::inc(&metrics.tftp_transfers, "result", label);
                    match result {
                        Ok(bytes) => tracing::info!(%peer, file = %filename, bytes, "TFTP: sent"),
                        Err(_) => {
                            tracing::info!(%peer, file = %filename, result = label, "TFTP: failed")
                        }
                    }
                });
            }
            Ok(Packet::Wrq) => {
                let _ = socket
                    .send_to(&packet::error(error_code::ACCESS, "read-only server"), peer)
                    .await;
            }
            Ok(_) => {
                let _ = socket
                    .send_to(
                        &packet::error(error_code::ILLEGAL, "expected a read request"),
                        peer,
                    )
                    .await;
            }
            Err(reason) => {
                tracing::debug!(%peer, reason, "TFTP: dropped malformed packet");
            }
        }
    }
}

#[derive(Debug)]
enum Failure {
    NotFound,
    Denied,
    Timeout,
    Aborted,
    Io(std::io::Error),
}

/// Opens the file a request names, refusing anything outside the root.
async fn open(root: &Path, filename: &str) -> Result<(tokio::fs::File, u64), Failure> {
    let path = packet::resolve(root, filename).map_err(|_| Failure::Denied)?;
    let canonical = tokio::fs::canonicalize(&path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Failure::NotFound,
            _ => Failure::Denied,
        })?;
    // A symlink inside the root must not lead out of it.
    if !canonical.starts_with(root) {
        return Err(Failure::Denied);
    }
    let file = tokio::fs::File::open(&canonical)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Failure::NotFound,
            _ => Failure::Denied,
        })?;
    let meta = file.metadata().await.map_err(Failure::Io)?;
    if !meta.is_file() {
        return Err(Failure::NotFound);
    }
    Ok((file, meta.len()))
}

/// Sends `packet` and waits for the ACK of `block`, retransmitting on timeout.
async fn send_and_wait(
    sock: &UdpSocket,
    packet: &[u8],
    block: u16,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut buf = [0u8; 516];
    for _ in 0..=MAX_RETRIES {
        sock.send(packet).await.map_err(Failure::Io)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break, // retransmit
                Ok(Err(e)) => return Err(Failure::Io(e)),
                Ok(Ok(len)) => match packet::parse(buf.get(..len).unwrap_or(&[])) {
                    Ok(Packet::Ack { block: b }) if b == block => return Ok(()),
                    // Duplicate ACKs are not answered (the Sorcerer's Apprentice bug).
                    Ok(Packet::Ack { .. }) => {}
                    Ok(Packet::Error { .. }) => return Err(Failure::Aborted),
                    _ => {}
                },
            }
        }
    }
    Err(Failure::Timeout)
}

async fn transfer(
    peer: SocketAddrV4,
    filename: &str,
    options: &[(String, String)],
    root: &Path,
    config: &TftpConfig,
    metrics: &Metrics,
) -> Result<u64, Failure> {
    let sock = bind_udp(
        "TFTP",
        crate::dhcp::server::any(0),
        config.interface.as_deref(),
    )
    .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))?;
    sock.connect(peer).await.map_err(Failure::Io)?;
    let (mut file, size) = match open(root, filename).await {
        Ok(f) => f,
        Err(f) => {
            let (code, msg) = match f {
                Failure::NotFound => (error_code::NOT_FOUND, "file not found"),
                _ => (error_code::ACCESS, "access violation"),
            };
            let _ = sock.send(&packet::error(code, msg)).await;
            return Err(f);
        }
    };
    let (negotiated, acked) = packet::negotiate(options, size, config.default_timeout_secs);
    let timeout = Duration::from_secs(u64::from(negotiated.timeout_secs));
    if !acked.is_empty() {
        send_and_wait(&sock, &packet::oack(&acked), 0, timeout).await?;
    }
    let blksize = usize::from(negotiated.blksize);
    let mut block: u16 = 1;
    let mut sent = 0u64;
    let mut payload = vec![0u8; blksize];
    loop {
        let mut filled = 0;
        while filled < blksize {
            let n = file
                .read(&mut payload[filled..])
                .await
                .map_err(Failure::Io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let chunk = &payload[..filled];
        send_and_wait(&sock, &packet::data(block, chunk), block, timeout).await?;
        sent += filled as u64;
        metrics.tftp_bytes.inc_by(filled as u64);
        if filled < blksize {
            return Ok(sent);
        }
        block = block.wrapping_add(1);
    }
}

//! The thin UDP loop under the IPMI client: send a datagram, wait for an answer the caller
//! accepts, retransmit on silence, give up at a deadline. No protocol knowledge lives here.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Wait before the first retransmission until a round trip has been measured.
const INITIAL_RETRANSMIT: Duration = Duration::from_millis(250);
/// Shortest wait before a retransmission, however fast the BMC answered so far: BMCs take
/// longer for some commands than for others.
const MIN_RETRANSMIT: Duration = Duration::from_millis(150);
/// Longest wait between retransmissions; waits grow by a quarter up to this (gently: BMC
/// links lose datagrams far more often than they congest).
const MAX_RETRANSMIT: Duration = Duration::from_secs(1);
/// Largest datagram we read; IPMI LAN packets are far smaller.
const MAX_DATAGRAM: usize = 2048;

/// One request/answer exchange, as the transport sees it.
pub(crate) trait Exchange {
    /// What an accepted answer decodes to.
    type Answer;
    /// The datagram for the next (re)transmission.
    fn datagram(&mut self) -> Vec<u8>;
    /// The answer in `datagram`, or `None` to keep waiting (stale, foreign or invalid).
    fn accept(&mut self, datagram: &[u8]) -> Option<Self::Answer>;
}

/// Why an exchange produced no answer.
#[derive(Debug)]
pub(crate) enum TransportError {
    /// Nothing acceptable arrived; `refused` when the peer's port answered ICMP unreachable.
    NoAnswer {
        /// The kernel reported "connection refused" at least once.
        refused: bool,
    },
    /// The socket failed (no route, address family unavailable, …).
    Io(io::Error),
}

/// A UDP socket connected to one BMC.
#[derive(Debug)]
pub(crate) struct Transport {
    socket: UdpSocket,
    /// Smoothed round-trip time in microseconds (0: not measured yet).
    srtt_micros: AtomicU64,
}

impl Transport {
    /// Bind an ephemeral port and connect it to `peer`, so ICMP errors are reported.
    pub(crate) async fn connect(peer: SocketAddr) -> io::Result<Self> {
        let local: SocketAddr = if peer.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(peer).await?;
        Ok(Self {
            socket,
            srtt_micros: AtomicU64::new(0),
        })
    }

    /// Send a datagram without waiting for an answer (best effort).
    pub(crate) async fn send(&self, datagram: &[u8]) {
        let _ = self.socket.send(datagram).await;
    }

    /// Transmit up to `attempts` times until `exchange` accepts an answer or `deadline` passes.
    pub(crate) async fn exchange<E: Exchange>(
        &self,
        exchange: &mut E,
        attempts: u32,
        deadline: Instant,
    ) -> Result<E::Answer, TransportError> {
        let mut refused = false;
        let mut wait = self.retransmit_timeout();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for attempt in 0..attempts.max(1) {
            let sent_at = Instant::now();
            if sent_at >= deadline {
                break;
            }
            match self.socket.send(&exchange.datagram()).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused = true,
                Err(e) => return Err(TransportError::Io(e)),
            }
            let until = (sent_at + wait).min(deadline);
            wait = (wait * 5 / 4).min(MAX_RETRANSMIT);
            loop {
                match tokio::time::timeout_at(until, self.socket.recv(&mut buf)).await {
                    Err(_elapsed) => break,
                    Ok(Ok(n)) => {
                        if let Some(answer) = exchange.accept(&buf[..n]) {
                            // Karn: only unambiguous (first-transmission) round trips count.
                            if attempt == 0 {
                                self.observe(sent_at.elapsed());
                            }
                            return Ok(answer);
                        }
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        // Nobody listens (yet): wait out this attempt rather than spin.
                        refused = true;
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                    Ok(Err(e)) => return Err(TransportError::Io(e)),
                }
            }
        }
        Err(TransportError::NoAnswer { refused })
    }

    /// Four smoothed round trips, within [`MIN_RETRANSMIT`, `MAX_RETRANSMIT`].
    fn retransmit_timeout(&self) -> Duration {
        match self.srtt_micros.load(Ordering::Relaxed) {
            0 => INITIAL_RETRANSMIT,
            srtt => (Duration::from_micros(srtt) * 4).clamp(MIN_RETRANSMIT, MAX_RETRANSMIT),
        }
    }

    fn observe(&self, rtt: Duration) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let srtt = match self.srtt_micros.load(Ordering::Relaxed) {
            0 => sample,
            old => old - old / 8 + sample / 8,
        };
        self.srtt_micros.store(srtt.max(1), Ordering::Relaxed);
    }
}

//! The virtual BMC's packet handler: one datagram in, at most one datagram out. Keeps the
//! RMCP+ sessions (handshake stages, keys, sequence numbers) and checks credentials via RAKP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vmetal_bmc::Credentials;
use vmetal_bmc::ipmi::commands::{self, completion};
use vmetal_bmc::ipmi::crypto::{self, CipherSuite};
use vmetal_bmc::ipmi::message::{Request, Response};
use vmetal_bmc::ipmi::rakp::{
    self, OpenSessionRequest, OpenSessionResponse, Rakp1, Rakp2, Rakp3, Rakp4, Transcript, status,
};
use vmetal_bmc::ipmi::rmcp::{self, Packet, PayloadType, V20Packet};
use vmetal_bmc::ipmi::session::{SequenceWindow, SessionKeys};

use super::dispatch::{self, BootParameters};
use crate::faults::FaultAction;
use crate::sim::SimulatedServer;

/// Most sessions (half-open included) kept at once.
pub const MAX_SESSIONS: usize = 256;
/// An active session unused this long is forgotten (the IPMI default is 60 s).
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A handshake not finished this long is forgotten.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a session is in its life.
enum Stage {
    /// Open Session answered; waiting for RAKP 1.
    Opened { reply: Vec<u8> },
    /// RAKP 2 sent; waiting for RAKP 3.
    Challenged {
        rakp1: Rakp1,
        transcript: Transcript,
        reply: Vec<u8>,
    },
    /// RAKP 4 sent: IPMI messages flow.
    Active(Box<Active>),
}

struct Active {
    keys: SessionKeys,
    privilege: u8,
    inbound: SequenceWindow,
    outbound: u32,
    /// RAKP 3 auth code and the RAKP 4 answer, to answer a retransmitted RAKP 3 again.
    rakp3_code: Vec<u8>,
    rakp4_reply: Vec<u8>,
    /// The previous request and its response: a retransmission (same rqSeq, command and data
    /// under a new session sequence number) gets the response again instead of acting twice.
    last: Option<(Request, Response)>,
}

struct Entry {
    peer: SocketAddr,
    console_session_id: u32,
    suite: CipherSuite,
    max_privilege: u8,
    last_seen: Instant,
    stage: Stage,
}

/// The protocol state of one virtual IPMI BMC.
pub struct Handler {
    server: SimulatedServer,
    credentials: Credentials,
    guid: [u8; 16],
    boot: BootParameters,
    sessions: HashMap<u32, Entry>,
    random: fn(&mut [u8]),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("server", &self.server.identity().id)
            .field("username", &self.credentials.username())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn os_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // Unreachable on supported platforms; a test BMC may then use weak nonces.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> (8 * (i % 4))) as u8 ^ i as u8;
        }
    }
}

impl Handler {
    /// A BMC for `server` accepting one user.
    pub fn new(server: SimulatedServer, username: String, password: String) -> Self {
        let guid = commands::uuid_to_guid(&server.identity().uuid).unwrap_or_default();
        Self {
            server,
            credentials: Credentials::new(username, password),
            guid,
            boot: BootParameters::default(),
            sessions: HashMap::new(),
            random: os_random,
        }
    }

    /// Use `random` for session IDs, nonces and IVs (deterministic tests).
    pub fn with_random(mut self, random: fn(&mut [u8])) -> Self {
        self.random = random;
        self
    }

    /// Sessions currently known (half-open included).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Answer one datagram from `peer`. `fault` is what the fault injector decided for it:
    /// `Fail` and `Busy` answer "node busy" (or "insufficient resources" in a handshake)
    /// without acting; `Drop` is the caller's business.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        fault: FaultAction,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let busy = matches!(fault, FaultAction::Fail | FaultAction::Busy);
        match rmcp::parse(datagram).ok()? {
            Packet::V15 {
                session_id: 0,
                message,
                ..
            } => self
                .sessionless(message, busy)
                .map(|reply| rmcp::encode_v15(&reply)),
            Packet::V15 { .. } => None,
            Packet::V20(p) => match p.payload_type {
                PayloadType::Ipmi if p.session_id == 0 && !p.authenticated && !p.encrypted => self
                    .sessionless(p.payload, busy)
                    .map(|reply| rmcp::encode_v20_plain(PayloadType::Ipmi, &reply)),
                PayloadType::Ipmi => self.in_session(&p, busy, now),
                PayloadType::OpenSessionRequest => self.open_session(p.payload, peer, busy, now),
                PayloadType::Rakp1 => self.rakp1(p.payload, peer, busy),
                PayloadType::Rakp3 => self.rakp3(p.payload, peer, busy, now),
                _ => None,
            },
        }
    }

    /// Commands allowed before a session: channel capabilities and cipher suites only.
    fn sessionless(&mut self, message: &[u8], busy: bool) -> Option<Vec<u8>> {
        let request = Request::parse(message).ok()?;
        let allowed = [
            commands::GET_CHANNEL_AUTH_CAPABILITIES,
            commands::GET_CHANNEL_CIPHER_SUITES,
        ];
        if !allowed
            .iter()
            .any(|c| c.netfn == request.netfn && c.code == request.cmd)
        {
            return None;
        }
        let (code, data) = if busy {
            (completion::NODE_BUSY, Vec::new())
        } else {
            dispatch::execute(&self.server, &mut self.boot, &self.guid, 0, &request)
        };
        Some(request.response(code, data).encode())
    }

    fn random_u32(&self) -> u32 {
        let mut b = [0u8; 4];
        (self.random)(&mut b);
        u32::from_le_bytes(b)
    }

    fn random_16(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        (self.random)(&mut b);
        b
    }

    fn expire(&mut self, now: Instant) {
        self.sessions.retain(|_, e| {
            let limit = match e.stage {
                Stage::Active(_) => SESSION_IDLE_TIMEOUT,
                _ => HANDSHAKE_TIMEOUT,
            };
            now.saturating_duration_since(e.last_seen) < limit
        });
    }

    fn open_session(
        &mut self,
        payload: &[u8],
        peer: SocketAddr,
        busy: bool,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let request = OpenSessionRequest::parse(payload).ok()?;
        let error = |code| {
            Some(rmcp::encode_v20_plain(
                PayloadType::OpenSessionResponse,
                &OpenSessionResponse::error(request.tag, code, request.console_session_id).encode(),
            ))
        };
        if busy {
            return error(status::INSUFFICIENT_RESOURCES);
        }
        // A retransmitted request gets the same session.
        if let Some(entry) = self
            .sessions
            .values()
            .find(|e| e.peer == peer && e.console_session_id == request.console_session_id)
            && let Stage::Opened { reply } = &entry.stage
        {
            return Some(reply.clone());
        }
        let Some(suite) = CipherSuite::from_algorithms(
            request.auth_algorithm,
            request.integrity_algorithm,
            request.confidentiality_algorithm,
        ) else {
            return error(status::NO_CIPHER_SUITE_MATCH);
        };
        let max_privilege = match request.max_privilege {
            0 => rakp::PRIVILEGE_ADMINISTRATOR,
            p if p <= rakp::PRIVILEGE_ADMINISTRATOR => p,
            _ => return error(status::INVALID_ROLE),
        };
        self.expire(now);
        if self.sessions.len() >= MAX_SESSIONS {
            return error(status::INSUFFICIENT_RESOURCES);
        }
        let mut bmc_session_id = self.random_u32();
        while bmc_session_id == 0 || self.sessions.contains_key(&bmc_session_id) {
            bmc_session_id = self.random_u32();
        }
        let (auth, integrity, confidentiality) = suite.algorithms();
        let reply = rmcp::encode_v20_plain(
            PayloadType::OpenSessionResponse,
            &OpenSessionResponse {
                tag: request.tag,
                status: status::NO_ERRORS,
                max_privilege,
                console_session_id: request.console_session_id,
                bmc_session_id,
                auth_algorithm: auth,
                integrity_algorithm: integrity,
                confidentiality_algorithm: confidentiality,
            }
            .encode(),
        );
        self.sessions.insert(
            bmc_session_id,
            Entry {
                peer,
                console_session_id: request.console_session_id,
                suite,
                max_privilege,
                last_seen: now,
                stage: Stage::Opened {
                    reply: reply.clone(),
                },
            },
        );
        Some(reply)
    }

    fn rakp1(&mut self, payload: &[u8], peer: SocketAddr, busy: bool) -> Option<Vec<u8>> {
        let rakp1 = Rakp1::parse(payload).ok()?;
        let error = |code, console| {
            Some(rmcp::encode_v20_plain(
                PayloadType::Rakp2,
                &Rakp2::error(rakp1.tag, code, console).encode(),
            ))
        };
        let Some(entry) = self
            .sessions
            .get(&rakp1.bmc_session_id)
            .filter(|e| e.peer == peer)
        else {
            return error(status::INVALID_SESSION_ID, 0);
        };
        let console = entry.console_session_id;
        match &entry.stage {
            Stage::Opened { .. } => {}
            Stage::Challenged {
                rakp1: first,
                reply,
                ..
            } if *first == rakp1 => return Some(reply.clone()),
            Stage::Challenged { .. } => {}
            Stage::Active(_) => return None,
        }
        if busy {
            return error(status::INSUFFICIENT_RESOURCES, console);
        }
        let privilege = rakp1.role & 0x0F;
        if privilege == 0 || privilege > 5 {
            return error(status::INVALID_ROLE, console);
        }
        if privilege > entry.max_privilege {
            return error(status::UNAUTHORIZED_ROLE, console);
        }
        if rakp1.username != self.credentials.username().as_bytes() {
            self.sessions.remove(&rakp1.bmc_session_id);
            return error(status::UNAUTHORIZED_NAME, console);
        }
        let transcript = Transcript {
            suite: entry.suite,
            console_session_id: console,
            bmc_session_id: rakp1.bmc_session_id,
            console_random: rakp1.console_random,
            bmc_random: self.random_16(),
            bmc_guid: self.guid,
            role: rakp1.role,
            username: rakp1.username.clone(),
        };
        let reply = rmcp::encode_v20_plain(
            PayloadType::Rakp2,
            &Rakp2 {
                tag: rakp1.tag,
                status: status::NO_ERRORS,
                console_session_id: console,
                bmc_random: transcript.bmc_random,
                bmc_guid: transcript.bmc_guid,
                auth_code: transcript.rakp2_auth_code(self.credentials.password().as_bytes()),
            }
            .encode(),
        );
        let entry = self.sessions.get_mut(&rakp1.bmc_session_id)?;
        entry.stage = Stage::Challenged {
            rakp1,
            transcript,
            reply: reply.clone(),
        };
        Some(reply)
    }

    fn rakp3(
        &mut self,
        payload: &[u8],
        peer: SocketAddr,
        busy: bool,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let rakp3 = Rakp3::parse(payload).ok()?;
        let id = rakp3.bmc_session_id;
        let error = |code, console| {
            Some(rmcp::encode_v20_plain(
                PayloadType::Rakp4,
                &Rakp4 {
                    tag: rakp3.tag,
                    status: code,
                    console_session_id: console,
                    integrity_check_value: Vec::new(),
                }
                .encode(),
            ))
        };
        let Some(entry) = self.sessions.get(&id).filter(|e| e.peer == peer) else {
            return error(status::INVALID_SESSION_ID, 0);
        };
        let console = entry.console_session_id;
        let transcript = match &entry.stage {
            Stage::Challenged { transcript, .. } => transcript.clone(),
            Stage::Active(active) if active.rakp3_code == rakp3.auth_code => {
                return Some(active.rakp4_reply.clone());
            }
            Stage::Opened { .. } | Stage::Active(_) => return None,
        };
        if rakp3.status != status::NO_ERRORS {
            // The console rejected our RAKP 2 (wrong password on its side).
            self.sessions.remove(&id);
            return None;
        }
        if busy {
            return error(status::INSUFFICIENT_RESOURCES, console);
        }
        let password = self.credentials.password().as_bytes();
        if !crypto::constant_time_eq(&transcript.rakp3_auth_code(password), &rakp3.auth_code) {
            self.sessions.remove(&id);
            return error(status::INVALID_INTEGRITY_CHECK_VALUE, console);
        }
        let sik = transcript.sik(password);
        let reply = rmcp::encode_v20_plain(
            PayloadType::Rakp4,
            &Rakp4 {
                tag: rakp3.tag,
                status: status::NO_ERRORS,
                console_session_id: console,
                integrity_check_value: transcript.rakp4_icv(&sik),
            }
            .encode(),
        );
        let entry = self.sessions.get_mut(&id)?;
        entry.last_seen = now;
        entry.stage = Stage::Active(Box::new(Active {
            keys: SessionKeys::from_sik(entry.suite, &sik),
            // Sessions start at USER; Set Session Privilege Level raises them.
            privilege: (transcript.role & 0x0F).min(rakp::PRIVILEGE_USER),
            inbound: SequenceWindow::default(),
            outbound: 1,
            rakp3_code: rakp3.auth_code,
            rakp4_reply: reply.clone(),
            last: None,
        }));
        Some(reply)
    }

    fn in_session(&mut self, packet: &V20Packet<'_>, busy: bool, now: Instant) -> Option<Vec<u8>> {
        let id = packet.session_id;
        let entry = self.sessions.get_mut(&id)?;
        let Stage::Active(active) = &mut entry.stage else {
            return None;
        };
        // Packets failing the integrity check or replayed are dropped silently, as the spec asks.
        let message = active.keys.open(packet).ok()?;
        if !active.inbound.accept(packet.sequence) {
            return None;
        }
        let request = Request::parse(&message).ok()?;
        entry.last_seen = now;
        let mut close = false;
        let retransmitted = active
            .last
            .as_ref()
            .filter(|(previous, _)| *previous == request)
            .map(|(_, response)| response.clone());
        let (code, data) = if let Some(response) = retransmitted {
            (response.completion_code, response.data)
        } else if busy {
            (completion::NODE_BUSY, Vec::new())
        } else if request.netfn == commands::SET_SESSION_PRIVILEGE_LEVEL.netfn
            && request.cmd == commands::SET_SESSION_PRIVILEGE_LEVEL.code
        {
            match request.data.first().map(|p| p & 0x0F) {
                None => (completion::REQUEST_DATA_LENGTH_INVALID, Vec::new()),
                Some(0) => (completion::OK, vec![active.privilege]),
                Some(p) if p > rakp::PRIVILEGE_ADMINISTRATOR => {
                    (completion::INVALID_DATA_FIELD, Vec::new())
                }
                Some(p) if p > entry.max_privilege => (0x81, Vec::new()),
                Some(p) => {
                    active.privilege = p;
                    (completion::OK, vec![p])
                }
            }
        } else if request.netfn == commands::CLOSE_SESSION.netfn
            && request.cmd == commands::CLOSE_SESSION.code
        {
            match request.data.get(..4) {
                None => (completion::REQUEST_DATA_LENGTH_INVALID, Vec::new()),
                Some(b) if b == id.to_le_bytes() => {
                    close = true;
                    (completion::OK, Vec::new())
                }
                // Closing other sessions is not offered: "invalid session ID in request".
                Some(_) => (0x87, Vec::new()),
            }
        } else {
            dispatch::execute(
                &self.server,
                &mut self.boot,
                &self.guid,
                active.privilege,
                &request,
            )
        };
        let response: Response = request.response(code, data);
        if !busy {
            active.last = Some((request, response.clone()));
        }
        let sequence = active.outbound;
        active.outbound = active.outbound.wrapping_add(1).max(1);
        let mut iv = [0u8; 16];
        (self.random)(&mut iv);
        let reply = active.keys.seal(
            PayloadType::Ipmi,
            entry.console_session_id,
            sequence,
            &response.encode(),
            iv,
        );
        if close {
            self.sessions.remove(&id);
        }
        Some(reply)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sim::ServerIdentity;
    use proptest::prelude::*;

    fn handler() -> Handler {
        Handler::new(
            SimulatedServer::new(ServerIdentity::numbered(0)),
            "admin".into(),
            "password".into(),
        )
        .with_random(|b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8 + 1))
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[test]
    fn get_channel_auth_capabilities_v15_gets_a_v15_answer() {
        let mut h = handler();
        let req = Request::new(0x06, 0x38, 1, vec![0x8e, 0x04]);
        let reply = h
            .handle(
                &rmcp::encode_v15(&req.encode()),
                peer(),
                FaultAction::Proceed,
                Instant::now(),
            )
            .unwrap();
        let Ok(Packet::V15 { message, .. }) = rmcp::parse(&reply) else {
            panic!("not v1.5")
        };
        let resp = Response::parse(message).unwrap();
        assert_eq!(resp.completion_code, 0);
        let caps = commands::ChannelAuthCapabilities::parse(&resp.data).unwrap();
        assert!(caps.supports_rmcp_plus());
    }

    #[test]
    fn busy_answers_node_busy_without_acting() {
        let mut h = handler();
        let req = Request::new(0x06, 0x38, 1, vec![0x8e, 0x04]);
        let reply = h
            .handle(
                &rmcp::encode_v15(&req.encode()),
                peer(),
                FaultAction::Busy,
                Instant::now(),
            )
            .unwrap();
        let Ok(Packet::V15 { message, .. }) = rmcp::parse(&reply) else {
            panic!("not v1.5")
        };
        assert_eq!(Response::parse(message).unwrap().completion_code, 0xC0);
    }

    #[test]
    fn unknown_user_gets_unauthorized_name_and_no_session() {
        let mut h = handler();
        let (a, i, c) = CipherSuite::Suite3.algorithms();
        let open = OpenSessionRequest {
            tag: 1,
            max_privilege: 0,
            console_session_id: 77,
            auth_algorithm: a,
            integrity_algorithm: i,
            confidentiality_algorithm: c,
        };
        let now = Instant::now();
        let reply = h
            .handle(
                &rmcp::encode_v20_plain(PayloadType::OpenSessionRequest, &open.encode()),
                peer(),
                FaultAction::Proceed,
                now,
            )
            .unwrap();
        let Ok(Packet::V20(p)) = rmcp::parse(&reply) else {
            panic!()
        };
        let opened = OpenSessionResponse::parse(p.payload).unwrap();
        assert_eq!(opened.status, 0);
        let rakp1 = Rakp1 {
            tag: 2,
            bmc_session_id: opened.bmc_session_id,
            console_random: [9; 16],
            role: 0x14,
            username: b"mallory".to_vec(),
        };
        let reply = h
            .handle(
                &rmcp::encode_v20_plain(PayloadType::Rakp1, &rakp1.encode()),
                peer(),
                FaultAction::Proceed,
                now,
            )
            .unwrap();
        let Ok(Packet::V20(p)) = rmcp::parse(&reply) else {
            panic!()
        };
        assert_eq!(
            Rakp2::parse(p.payload).unwrap().status,
            status::UNAUTHORIZED_NAME
        );
        assert_eq!(h.session_count(), 0);
    }

    fn v20_payload(reply: &[u8]) -> Vec<u8> {
        let Ok(Packet::V20(p)) = rmcp::parse(reply) else {
            panic!("not RMCP+")
        };
        p.payload.to_vec()
    }

    /// The console side of a handshake, bytes in and bytes out; returns (keys, BMC session ID).
    fn establish(h: &mut Handler, suite: CipherSuite, now: Instant) -> (SessionKeys, u32) {
        let (a, i, c) = suite.algorithms();
        let open = OpenSessionRequest {
            tag: 1,
            max_privilege: 0,
            console_session_id: 0xA0A2_A3A4,
            auth_algorithm: a,
            integrity_algorithm: i,
            confidentiality_algorithm: c,
        };
        let send = |h: &mut Handler, t, payload: &[u8]| {
            let reply = h
                .handle(
                    &rmcp::encode_v20_plain(t, payload),
                    peer(),
                    FaultAction::Proceed,
                    now,
                )
                .unwrap();
            v20_payload(&reply)
        };
        let opened =
            OpenSessionResponse::parse(&send(h, PayloadType::OpenSessionRequest, &open.encode()))
                .unwrap();
        let rakp1 = Rakp1 {
            tag: 2,
            bmc_session_id: opened.bmc_session_id,
            console_random: [7; 16],
            role: 0x14,
            username: b"admin".to_vec(),
        };
        let rakp2 = Rakp2::parse(&send(h, PayloadType::Rakp1, &rakp1.encode())).unwrap();
        let t = Transcript {
            suite,
            console_session_id: open.console_session_id,
            bmc_session_id: opened.bmc_session_id,
            console_random: rakp1.console_random,
            bmc_random: rakp2.bmc_random,
            bmc_guid: rakp2.bmc_guid,
            role: rakp1.role,
            username: rakp1.username.clone(),
        };
        assert_eq!(t.rakp2_auth_code(b"password"), rakp2.auth_code);
        let rakp3 = Rakp3 {
            tag: 3,
            status: 0,
            bmc_session_id: opened.bmc_session_id,
            auth_code: t.rakp3_auth_code(b"password"),
        };
        let rakp4 = Rakp4::parse(&send(h, PayloadType::Rakp3, &rakp3.encode())).unwrap();
        let sik = t.sik(b"password");
        assert_eq!(rakp4.integrity_check_value, t.rakp4_icv(&sik));
        (SessionKeys::from_sik(suite, &sik), opened.bmc_session_id)
    }

    fn call(
        h: &mut Handler,
        keys: &SessionKeys,
        id: u32,
        seq: u32,
        req: &Request,
    ) -> Option<Response> {
        let sealed = keys.seal(PayloadType::Ipmi, id, seq, &req.encode(), [5; 16]);
        let reply = h.handle(&sealed, peer(), FaultAction::Proceed, Instant::now())?;
        let Ok(Packet::V20(p)) = rmcp::parse(&reply) else {
            panic!("not RMCP+")
        };
        assert_eq!(p.session_id, 0xA0A2_A3A4);
        Some(Response::parse(&keys.open(&p).unwrap()).unwrap())
    }

    #[test]
    fn session_privilege_replays_and_retransmissions() {
        for suite in CipherSuite::PREFERENCE {
            let mut h = handler();
            let (keys, id) = establish(&mut h, suite, Instant::now());
            let power_up = Request::new(0x00, 0x02, 1, vec![1]);
            // Sessions start at USER: chassis control needs OPERATOR.
            let r = call(&mut h, &keys, id, 1, &power_up).unwrap();
            assert_eq!(r.completion_code, completion::INSUFFICIENT_PRIVILEGE);
            let r = call(&mut h, &keys, id, 2, &Request::new(0x06, 0x3B, 2, vec![4])).unwrap();
            assert_eq!((r.completion_code, r.data), (0, vec![4]));
            // A replayed sequence number is dropped.
            assert!(call(&mut h, &keys, id, 2, &Request::new(0x06, 0x01, 3, vec![])).is_none());
            // Power cycle, then its retransmission (same rqSeq, new sequence number): one boot.
            let cycle = Request::new(0x00, 0x02, 4, vec![2]);
            assert_eq!(
                call(&mut h, &keys, id, 3, &cycle).unwrap().completion_code,
                0
            );
            assert_eq!(
                call(&mut h, &keys, id, 4, &cycle).unwrap().completion_code,
                0
            );
            assert_eq!(h.server.state().boot_count, 1);
            // Other keys (wrong SIK) are ignored.
            let other = SessionKeys::from_sik(suite, &[1; 32]);
            let sealed = other.seal(PayloadType::Ipmi, id, 5, &cycle.encode(), [0; 16]);
            assert!(
                h.handle(&sealed, peer(), FaultAction::Proceed, Instant::now())
                    .is_none()
            );
            // Close Session ends it.
            let close = Request::new(0x06, 0x3C, 5, id.to_le_bytes().to_vec());
            assert_eq!(
                call(&mut h, &keys, id, 6, &close).unwrap().completion_code,
                0
            );
            assert_eq!(h.session_count(), 0);
            assert!(call(&mut h, &keys, id, 7, &Request::new(0x06, 0x01, 6, vec![])).is_none());
        }
    }

    #[test]
    fn idle_sessions_expire() {
        let mut h = handler();
        let long_ago = Instant::now();
        establish(&mut h, CipherSuite::Suite3, long_ago);
        assert_eq!(h.session_count(), 1);
        h.expire(long_ago + SESSION_IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(h.session_count(), 0);
    }

    proptest! {
        #[test]
        fn handler_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut h = handler();
            let _ = h.handle(&bytes, peer(), FaultAction::Proceed, Instant::now());
        }

        #[test]
        fn handler_never_panics_on_plausible_packets(
            kind in prop_oneof![Just(0x00u8), Just(0x10), Just(0x12), Just(0x14), Just(0xC0)],
            session in prop_oneof![Just(0u32), any::<u32>()],
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            trailer in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut h = handler();
            let mut bytes = vec![0x06, 0x00, 0xff, 0x07, 0x06, kind];
            bytes.extend_from_slice(&session.to_le_bytes());
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            bytes.extend(payload);
            bytes.extend(trailer);
            let _ = h.handle(&bytes, peer(), FaultAction::Proceed, Instant::now());
        }
    }
}

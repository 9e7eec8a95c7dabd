//! [`IpmiBmc`]: the [`Bmc`] trait over IPMI 2.0 lanplus. Negotiates the cipher suite, opens
//! an RMCP+ session, retries within each operation's time bound, re-establishes dropped sessions.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;
use vmetal_api::bmc_address::{BmcAddress, Protocol};

use super::DecodeError;
use super::commands::{
    self, BootFlags, ChannelAuthCapabilities, ChassisControl, ChassisStatus, Command, DeviceId,
    boot_device, completion,
};
use super::crypto::{self, CipherSuite};
use super::message::{Request, Response};
use super::rakp::{
    self, OpenSessionRequest, OpenSessionResponse, Rakp1, Rakp2, Rakp3, Rakp4, Transcript, status,
};
use super::rmcp::{self, Packet, PayloadType};
use super::session::{SequenceWindow, SessionKeys};
use super::transport::{Exchange, Transport, TransportError};
use crate::{
    Bmc, BmcError, BootDevice, BootModeOverride, BootOverride, ConnectOptions, Credentials,
    PowerAction, PowerState, SystemInfo,
};

/// Transmissions of one handshake or in-session message before the session is presumed lost
/// and re-established (the operation's deadline bounds everything anyway). Five keeps a
/// needless re-establishment rare (1 in 32 messages) even when half the datagrams are lost.
const ATTEMPTS: u32 = 5;
/// First wait after a "node busy" answer; doubles per retry.
const BUSY_BACKOFF: Duration = Duration::from_millis(100);

/// An IPMI 2.0 (RMCP+ lanplus) BMC.
///
/// One session is kept open across operations and re-established when the BMC forgets it.
/// Operations on one `IpmiBmc` are serialised; each is bounded by [`ConnectOptions::timeout`].
pub struct IpmiBmc {
    address: BmcAddress,
    credentials: Credentials,
    options: ConnectOptions,
    label: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for IpmiBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiBmc")
            .field("address", &self.label)
            .field("username", &self.credentials.username())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    transport: Option<Transport>,
    /// The suite chosen by the first negotiation, reused when re-establishing.
    suite: Option<CipherSuite>,
    session: Option<Session>,
    rq_seq: u8,
    tag: u8,
}

struct Session {
    keys: SessionKeys,
    console_session_id: u32,
    bmc_session_id: u32,
    next_sequence: u32,
    inbound: SequenceWindow,
}

/// How one attempt at an operation ended, short of a response.
enum Failure {
    /// No (acceptable) answer: re-establish and try again while time remains.
    Silent { refused: bool },
    /// The BMC asked us to come back later.
    Busy(String),
    /// Give up with this error.
    Fatal(BmcError),
}

impl From<BmcError> for Failure {
    fn from(e: BmcError) -> Self {
        Self::Fatal(e)
    }
}

impl IpmiBmc {
    /// A driver for the BMC at `address` (an `ipmi://` or bare address). No traffic until the
    /// first operation. Fails when the credentials cannot be expressed in IPMI 2.0 or the
    /// address fixes a cipher suite vmetal does not implement.
    pub fn new(
        address: BmcAddress,
        credentials: Credentials,
        options: ConnectOptions,
    ) -> Result<Self, BmcError> {
        let label = address.to_string();
        let not_supported = |operation| BmcError::NotSupported {
            address: label.clone(),
            operation,
        };
        if address.driver.protocol() != Protocol::Ipmi {
            return Err(not_supported(
                "IPMI on a Redfish address; use an ipmi:// address",
            ));
        }
        if credentials.username().len() > rakp::MAX_USERNAME_LEN {
            return Err(not_supported("IPMI user names longer than 16 bytes"));
        }
        if credentials.password().len() > rakp::MAX_PASSWORD_LEN {
            return Err(not_supported("IPMI passwords longer than 20 bytes"));
        }
        if let Some(id) = address.cipher_suite
            && CipherSuite::from_id(id).is_none()
        {
            return Err(not_supported("IPMI cipher suites other than 3 and 17"));
        }
        Ok(Self {
            address,
            credentials,
            options,
            label,
            state: Mutex::new(State::default()),
        })
    }

    /// Get Device ID: the BMC's manufacturer, product and firmware revision.
    pub async fn mc_info(&self) -> Result<DeviceId, BmcError> {
        let data = self
            .call(commands::GET_DEVICE_ID, Vec::new(), self.deadline())
            .await?;
        DeviceId::parse(&data).map_err(|e| self.malformed(commands::GET_DEVICE_ID, &e))
    }

    /// Get System GUID, as a lower-case hyphenated UUID.
    pub async fn system_guid(&self) -> Result<String, BmcError> {
        let data = self
            .call(commands::GET_SYSTEM_GUID, Vec::new(), self.deadline())
            .await?;
        let guid = commands::parse_guid(&data)
            .map_err(|e| self.malformed(commands::GET_SYSTEM_GUID, &e))?;
        Ok(commands::guid_to_uuid(&guid))
    }

    /// The pending boot flags (Get System Boot Options, parameter 5).
    pub async fn boot_flags(&self) -> Result<BootFlags, BmcError> {
        self.boot_flags_by(self.deadline()).await
    }

    /// The cipher suite of the current session, if one is open.
    pub async fn session_cipher_suite(&self) -> Option<CipherSuite> {
        let state = self.state.lock().await;
        state.session.as_ref().map(|s| s.keys.suite())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.options.timeout
    }

    async fn boot_flags_by(&self, deadline: Instant) -> Result<BootFlags, BmcError> {
        let command = commands::GET_SYSTEM_BOOT_OPTIONS;
        let data = self
            .call(
                command,
                commands::get_boot_option_request(commands::BOOT_PARAM_BOOT_FLAGS),
                deadline,
            )
            .await?;
        commands::parse_boot_option_response(&data)
            .and_then(BootFlags::parse)
            .map_err(|e| self.malformed(command, &e))
    }

    /// Run one command in the session, establishing it first when needed.
    async fn call(
        &self,
        command: Command,
        data: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, BmcError> {
        let mut state = self.state.lock().await;
        let mut busy_retries = 0;
        let mut backoff = BUSY_BACKOFF;
        loop {
            let busy = match self.attempt(&mut state, command, &data, deadline).await {
                Ok(response) if response.completion_code == completion::OK => {
                    return Ok(response.data);
                }
                Ok(response) if response.completion_code == completion::NODE_BUSY => {
                    format!("{} answered completion code 0xc0 (node busy)", command.name)
                }
                Ok(response) => return Err(self.rejected(command.name, response.completion_code)),
                Err(Failure::Busy(message)) => message,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Silent { refused }) => {
                    state.session = None;
                    if Instant::now() >= deadline {
                        return Err(self.no_answer(refused));
                    }
                    tracing::debug!(bmc = %self.label, "no answer from IPMI BMC; re-establishing the session");
                    continue;
                }
            };
            if busy_retries >= self.options.retries || Instant::now() + backoff >= deadline {
                return Err(BmcError::Busy {
                    address: self.label.clone(),
                    message: busy,
                });
            }
            busy_retries += 1;
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    async fn attempt(
        &self,
        state: &mut State,
        command: Command,
        data: &[u8],
        deadline: Instant,
    ) -> Result<Response, Failure> {
        if state.transport.is_none() {
            state.transport = Some(self.connect(deadline).await?);
        }
        if state.session.is_none() {
            let session = self.establish(state, deadline).await?;
            state.session = Some(session);
        }
        self.in_session(state, command, data.to_vec(), deadline)
            .await
    }

    async fn connect(&self, deadline: Instant) -> Result<Transport, BmcError> {
        let target = (self.address.host.as_str(), self.address.port);
        let unreachable = |reason: String| BmcError::Unreachable {
            address: self.label.clone(),
            reason,
        };
        let peer = match tokio::time::timeout_at(deadline, tokio::net::lookup_host(target)).await {
            Err(_) => return Err(self.no_answer(false)),
            Ok(Err(e)) => return Err(unreachable(format!("cannot resolve the host: {e}"))),
            Ok(Ok(mut addrs)) => addrs
                .next()
                .ok_or_else(|| unreachable("the host name has no addresses".into()))?,
        };
        Transport::connect(peer)
            .await
            .map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))
    }

    /// Get Channel Authentication Capabilities, cipher suite choice, Open Session, RAKP 1-4,
    /// Set Session Privilege Level.
    async fn establish(&self, state: &mut State, deadline: Instant) -> Result<Session, Failure> {
        let privilege = self.address.privilege_level.code();
        self.check_rmcp_plus(state, privilege, deadline).await?;
        let suite = match self.address.cipher_suite.and_then(CipherSuite::from_id) {
            Some(suite) => suite,
            None => match state.suite {
                Some(suite) => suite,
                None => {
                    let suite = self.negotiate_suite(state, deadline).await?;
                    state.suite = Some(suite);
                    suite
                }
            },
        };
        let Some(transport) = state.transport.as_ref() else {
            return Err(Failure::Silent { refused: false });
        };

        // Open Session.
        let (auth, integrity, confidentiality) = suite.algorithms();
        let console_session_id = u32::from_le_bytes(random::<4>()).max(1);
        state.tag = state.tag.wrapping_add(1);
        let open = OpenSessionRequest {
            tag: state.tag,
            max_privilege: privilege,
            console_session_id,
            auth_algorithm: auth,
            integrity_algorithm: integrity,
            confidentiality_algorithm: confidentiality,
        };
        let mut exchange = Handshake {
            datagram: rmcp::encode_v20_plain(PayloadType::OpenSessionRequest, &open.encode()),
            expect: PayloadType::OpenSessionResponse,
            parse: |p: &[u8]| {
                OpenSessionResponse::parse(p)
                    .ok()
                    .filter(|r| r.tag == open.tag && r.console_session_id == console_session_id)
            },
        };
        let opened = self.handshake(transport, &mut exchange, deadline).await?;
        if opened.status != status::NO_ERRORS {
            return Err(self.open_session_failure(suite, opened.status));
        }
        if CipherSuite::from_algorithms(
            opened.auth_algorithm,
            opened.integrity_algorithm,
            opened.confidentiality_algorithm,
        ) != Some(suite)
        {
            return Err(Failure::Fatal(self.malformed_detail(
                "session setup",
                format!(
                    "the BMC chose other algorithms than cipher suite {}",
                    suite.id()
                ),
            )));
        }

        // RAKP 1 and 2.
        let role = privilege | rakp::NAME_ONLY_LOOKUP;
        let username = self.credentials.username().as_bytes().to_vec();
        let console_random = random::<16>();
        let bmc_session_id = opened.bmc_session_id;
        state.tag = state.tag.wrapping_add(1);
        let rakp1 = Rakp1 {
            tag: state.tag,
            bmc_session_id,
            console_random,
            role,
            username: username.clone(),
        };
        let mut exchange = Handshake {
            datagram: rmcp::encode_v20_plain(PayloadType::Rakp1, &rakp1.encode()),
            expect: PayloadType::Rakp2,
            parse: |p: &[u8]| {
                Rakp2::parse(p)
                    .ok()
                    .filter(|r| r.tag == rakp1.tag && r.console_session_id == console_session_id)
            },
        };
        let rakp2 = self.handshake(transport, &mut exchange, deadline).await?;
        if rakp2.status != status::NO_ERRORS {
            return Err(self.rakp_failure(rakp2.status));
        }
        let transcript = Transcript {
            suite,
            console_session_id,
            bmc_session_id,
            console_random,
            bmc_random: rakp2.bmc_random,
            bmc_guid: rakp2.bmc_guid,
            role,
            username,
        };
        let password = self.credentials.password().as_bytes();
        state.tag = state.tag.wrapping_add(1);
        if !crypto::constant_time_eq(&transcript.rakp2_auth_code(password), &rakp2.auth_code) {
            // Tell the BMC so it frees the half-open session, as ipmitool does.
            let reject = Rakp3 {
                tag: state.tag,
                status: status::INVALID_INTEGRITY_CHECK_VALUE,
                bmc_session_id,
                auth_code: Vec::new(),
            };
            transport
                .send(&rmcp::encode_v20_plain(
                    PayloadType::Rakp3,
                    &reject.encode(),
                ))
                .await;
            return Err(self.authentication_failed());
        }

        // RAKP 3 and 4.
        let rakp3 = Rakp3 {
            tag: state.tag,
            status: status::NO_ERRORS,
            bmc_session_id,
            auth_code: transcript.rakp3_auth_code(password),
        };
        let mut exchange = Handshake {
            datagram: rmcp::encode_v20_plain(PayloadType::Rakp3, &rakp3.encode()),
            expect: PayloadType::Rakp4,
            parse: |p: &[u8]| {
                Rakp4::parse(p)
                    .ok()
                    .filter(|r| r.tag == rakp3.tag && r.console_session_id == console_session_id)
            },
        };
        let rakp4 = self.handshake(transport, &mut exchange, deadline).await?;
        if rakp4.status != status::NO_ERRORS {
            return Err(self.rakp_failure(rakp4.status));
        }
        let sik = transcript.sik(password);
        if !crypto::constant_time_eq(&transcript.rakp4_icv(&sik), &rakp4.integrity_check_value) {
            return Err(self.authentication_failed());
        }
        state.session = Some(Session {
            keys: SessionKeys::from_sik(suite, &sik),
            console_session_id,
            bmc_session_id,
            next_sequence: 1,
            inbound: SequenceWindow::default(),
        });

        // Sessions start at USER; raise to what the address asks for.
        if privilege > rakp::PRIVILEGE_USER {
            let command = commands::SET_SESSION_PRIVILEGE_LEVEL;
            let response = self
                .in_session(state, command, vec![privilege], deadline)
                .await?;
            if response.completion_code != completion::OK {
                state.session = None;
                return Err(Failure::Fatal(BmcError::Rejected {
                    address: self.label.clone(),
                    operation: command.name,
                    message: format!(
                        "privilege level {:?} not granted: completion code {:#04x} ({}); \
                         lower ?privilegelevel= in the address or grant the user more",
                        self.address.privilege_level,
                        response.completion_code,
                        completion::describe(response.completion_code)
                    ),
                }));
            }
        }
        tracing::debug!(bmc = %self.label, suite = suite.id(), "IPMI session established");
        state
            .session
            .take()
            .ok_or(Failure::Silent { refused: false })
    }

    /// Get Channel Authentication Capabilities: proves the BMC is there and speaks RMCP+.
    async fn check_rmcp_plus(
        &self,
        state: &mut State,
        privilege: u8,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let command = commands::GET_CHANNEL_AUTH_CAPABILITIES;
        state.rq_seq = (state.rq_seq + 1) & 0x3F;
        let request = Request::new(
            command.netfn,
            command.code,
            state.rq_seq,
            commands::channel_auth_capabilities_request(privilege),
        );
        let Some(transport) = state.transport.as_ref() else {
            return Err(Failure::Silent { refused: false });
        };
        let mut exchange = Sessionless {
            request: &request,
            v15: true,
        };
        // The BMC may just be slow to boot: keep asking until the deadline.
        let response = transport
            .exchange(&mut exchange, u32::MAX, deadline)
            .await
            .map_err(|e| self.transport_failure(e))?;
        match response.completion_code {
            completion::OK => {}
            completion::NODE_BUSY => {
                return Err(Failure::Busy(format!(
                    "{} answered node busy",
                    command.name
                )));
            }
            cc => return Err(Failure::Fatal(self.rejected(command.name, cc))),
        }
        let caps = ChannelAuthCapabilities::parse(&response.data)
            .map_err(|e| Failure::Fatal(self.malformed(command, &e)))?;
        if !caps.supports_rmcp_plus() {
            return Err(Failure::Fatal(BmcError::NotSupported {
                address: self.label.clone(),
                operation: "IPMI 2.0 (RMCP+ lanplus) sessions; only IPMI 1.5 is offered",
            }));
        }
        Ok(())
    }

    /// The strongest of suites 17 and 3 that the BMC lists (suite 3 when it cannot list).
    async fn negotiate_suite(
        &self,
        state: &mut State,
        deadline: Instant,
    ) -> Result<CipherSuite, Failure> {
        let command = commands::GET_CHANNEL_CIPHER_SUITES;
        let mut records = Vec::new();
        for index in 0..0x40u8 {
            state.rq_seq = (state.rq_seq + 1) & 0x3F;
            let request = Request::new(
                command.netfn,
                command.code,
                state.rq_seq,
                commands::channel_cipher_suites_request(index),
            );
            let Some(transport) = state.transport.as_ref() else {
                return Err(Failure::Silent { refused: false });
            };
            let mut exchange = Sessionless {
                request: &request,
                v15: false,
            };
            let response = transport
                .exchange(&mut exchange, ATTEMPTS, deadline)
                .await
                .map_err(|e| self.transport_failure(e))?;
            if response.completion_code != completion::OK || response.data.is_empty() {
                // IPMI 2.0 makes suite 3 mandatory; a BMC that cannot list still has it.
                tracing::debug!(bmc = %self.label, cc = response.completion_code, "cannot list cipher suites; using suite 3");
                return Ok(CipherSuite::Suite3);
            }
            let page = &response.data[1..];
            records.extend_from_slice(page);
            if page.len() < commands::CIPHER_SUITE_RECORDS_PER_RESPONSE {
                break;
            }
        }
        let offered = commands::parse_cipher_suite_records(&records);
        CipherSuite::PREFERENCE
            .into_iter()
            .find(|s| offered.contains(&s.id()))
            .ok_or_else(|| {
                Failure::Fatal(BmcError::NotSupported {
                    address: self.label.clone(),
                    operation: "cipher suite 3 or 17 (the BMC offers neither)",
                })
            })
    }

    async fn handshake<E: Exchange>(
        &self,
        transport: &Transport,
        exchange: &mut E,
        deadline: Instant,
    ) -> Result<E::Answer, Failure> {
        transport
            .exchange(exchange, ATTEMPTS, deadline)
            .await
            .map_err(|e| self.transport_failure(e))
    }

    /// Send one request in the established session and wait for its response.
    async fn in_session(
        &self,
        state: &mut State,
        command: Command,
        data: Vec<u8>,
        deadline: Instant,
    ) -> Result<Response, Failure> {
        state.rq_seq = (state.rq_seq + 1) & 0x3F;
        let request = Request::new(command.netfn, command.code, state.rq_seq, data);
        let (Some(transport), Some(session)) = (state.transport.as_ref(), state.session.as_mut())
        else {
            return Err(Failure::Silent { refused: false });
        };
        let mut exchange = InSession {
            session,
            request: &request,
            encoded: request.encode(),
        };
        transport
            .exchange(&mut exchange, ATTEMPTS, deadline)
            .await
            .map_err(|e| self.transport_failure(e))
    }

    fn transport_failure(&self, e: TransportError) -> Failure {
        match e {
            TransportError::NoAnswer { refused } => Failure::Silent { refused },
            TransportError::Io(e) => Failure::Fatal(BmcError::Unreachable {
                address: self.label.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn open_session_failure(&self, suite: CipherSuite, code: u8) -> Failure {
        match code {
            status::INSUFFICIENT_RESOURCES | status::INSUFFICIENT_RESOURCES_FOR_ROLE => {
                Failure::Busy(format!("Open Session: {}", status::describe(code)))
            }
            status::INVALID_AUTHENTICATION_ALGORITHM
            | status::INVALID_INTEGRITY_ALGORITHM
            | status::INVALID_CONFIDENTIALITY_ALGORITHM
            | status::NO_CIPHER_SUITE_MATCH => Failure::Fatal(BmcError::NotSupported {
                address: self.label.clone(),
                operation: match suite {
                    CipherSuite::Suite3 => "cipher suite 3",
                    CipherSuite::Suite17 => "cipher suite 17",
                },
            }),
            other => Failure::Fatal(self.rakp_rejected(other)),
        }
    }

    fn rakp_failure(&self, code: u8) -> Failure {
        match code {
            status::UNAUTHORIZED_NAME
            | status::INVALID_NAME_LENGTH
            | status::INVALID_INTEGRITY_CHECK_VALUE
            | status::UNAUTHORIZED_GUID => self.authentication_failed(),
            status::INSUFFICIENT_RESOURCES | status::INSUFFICIENT_RESOURCES_FOR_ROLE => {
                Failure::Busy(format!("RAKP: {}", status::describe(code)))
            }
            // The BMC forgot the half-open session: start over.
            status::INVALID_SESSION_ID | 0x08 => Failure::Silent { refused: false },
            other => Failure::Fatal(self.rakp_rejected(other)),
        }
    }

    fn rakp_rejected(&self, code: u8) -> BmcError {
        let hint = match code {
            status::INVALID_ROLE | status::UNAUTHORIZED_ROLE => {
                "; lower ?privilegelevel= in the address or grant the user more"
            }
            _ => "",
        };
        BmcError::Rejected {
            address: self.label.clone(),
            operation: "session setup",
            message: format!(
                "RMCP+ status {code:#04x} ({}){hint}",
                status::describe(code)
            ),
        }
    }

    fn authentication_failed(&self) -> Failure {
        Failure::Fatal(BmcError::AuthenticationFailed {
            address: self.label.clone(),
        })
    }

    fn rejected(&self, operation: &'static str, code: u8) -> BmcError {
        BmcError::Rejected {
            address: self.label.clone(),
            operation,
            message: format!(
                "completion code {code:#04x} ({})",
                completion::describe(code)
            ),
        }
    }

    fn malformed(&self, command: Command, e: &DecodeError) -> BmcError {
        self.malformed_detail(command.name, e.to_string())
    }

    fn malformed_detail(&self, operation: &'static str, detail: String) -> BmcError {
        BmcError::MalformedResponse {
            address: self.label.clone(),
            operation,
            detail,
        }
    }

    fn no_answer(&self, refused: bool) -> BmcError {
        if refused {
            BmcError::Unreachable {
                address: self.label.clone(),
                reason: format!(
                    "UDP port {} refused datagrams for {:?} (nothing listens there)",
                    self.address.port, self.options.timeout
                ),
            }
        } else {
            BmcError::Timeout {
                address: self.label.clone(),
                after: self.options.timeout,
            }
        }
    }

    /// Set a boot option parameter; `Ok(false)` when the BMC refused it with a completion code.
    async fn set_boot_option(
        &self,
        parameter: u8,
        data: &[u8],
        deadline: Instant,
    ) -> Result<bool, BmcError> {
        let request = commands::set_boot_option_request(parameter, data);
        match self
            .call(commands::SET_SYSTEM_BOOT_OPTIONS, request, deadline)
            .await
        {
            Ok(_) => Ok(true),
            Err(BmcError::Rejected { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Bmc for IpmiBmc {
    fn address(&self) -> &BmcAddress {
        &self.address
    }

    async fn validate(&self) -> Result<(), BmcError> {
        self.power_state().await.map(drop)
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let command = commands::GET_CHASSIS_STATUS;
        let data = self.call(command, Vec::new(), self.deadline()).await?;
        let status = ChassisStatus::parse(&data).map_err(|e| self.malformed(command, &e))?;
        Ok(if status.power_on() {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let control = match action {
            PowerAction::On => ChassisControl::PowerUp,
            PowerAction::ForceOff => ChassisControl::PowerDown,
            PowerAction::GracefulShutdown => ChassisControl::SoftShutdown,
            PowerAction::ForceRestart => ChassisControl::HardReset,
            PowerAction::PowerCycle => ChassisControl::PowerCycle,
        };
        self.call(
            commands::CHASSIS_CONTROL,
            vec![control.code()],
            self.deadline(),
        )
        .await
        .map(drop)
    }

    async fn set_boot_device(&self, boot: BootOverride) -> Result<(), BmcError> {
        let device = match boot.device {
            BootDevice::Pxe => boot_device::PXE,
            BootDevice::Disk => boot_device::DISK,
            BootDevice::Cd => boot_device::CD,
            BootDevice::BiosSetup => boot_device::BIOS_SETUP,
            BootDevice::UefiHttp => {
                return Err(BmcError::NotSupported {
                    address: self.label.clone(),
                    operation: "UEFI HTTP boot over IPMI",
                });
            }
        };
        let deadline = self.deadline();
        let efi = match boot.mode {
            Some(BootModeOverride::Uefi) => true,
            Some(BootModeOverride::Legacy) => false,
            // IPMI has no "keep the mode": carry over what is set now.
            None => match self.boot_flags_by(deadline).await {
                Ok(flags) => flags.efi,
                Err(BmcError::Rejected { .. } | BmcError::MalformedResponse { .. }) => false,
                Err(e) => return Err(e),
            },
        };
        let flags = BootFlags {
            valid: true,
            persistent: boot.persistent,
            efi,
            device,
        };
        // Like ipmitool: take the set-in-progress lock, clear the BIOS POST acknowledge, write
        // the flags, commit, release. The lock and acknowledge are optional in the spec, so a
        // BMC refusing them is no failure.
        let locked = self
            .set_boot_option(
                commands::BOOT_PARAM_SET_IN_PROGRESS,
                &[commands::SET_IN_PROGRESS],
                deadline,
            )
            .await?;
        let result = async {
            self.set_boot_option(commands::BOOT_PARAM_INFO_ACK, &[0x01, 0x01], deadline)
                .await?;
            self.call(
                commands::SET_SYSTEM_BOOT_OPTIONS,
                commands::set_boot_option_request(commands::BOOT_PARAM_BOOT_FLAGS, &flags.encode()),
                deadline,
            )
            .await?;
            if locked {
                self.set_boot_option(
                    commands::BOOT_PARAM_SET_IN_PROGRESS,
                    &[commands::COMMIT_WRITE],
                    deadline,
                )
                .await?;
            }
            Ok(())
        }
        .await;
        if locked {
            let _ = self
                .set_boot_option(
                    commands::BOOT_PARAM_SET_IN_PROGRESS,
                    &[commands::SET_COMPLETE],
                    deadline.max(Instant::now() + Duration::from_secs(1)),
                )
                .await;
        }
        result
    }

    async fn system_info(&self) -> Result<SystemInfo, BmcError> {
        let device = self.mc_info().await?;
        let uuid = match self.system_guid().await {
            Ok(uuid) => Some(uuid),
            Err(BmcError::Rejected { .. } | BmcError::MalformedResponse { .. }) => None,
            Err(e) => return Err(e),
        };
        let power_state = Some(self.power_state().await?);
        let manufacturer = commands::manufacturer_name(device.manufacturer_id)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("IANA enterprise {}", device.manufacturer_id));
        Ok(SystemInfo {
            manufacturer: Some(manufacturer),
            // Model, serial and BIOS version live in FRU/SMBIOS data, not in these commands.
            model: None,
            serial_number: None,
            uuid,
            bios_version: None,
            power_state,
        })
    }

    async fn close(&self) -> Result<(), BmcError> {
        let mut state = self.state.lock().await;
        let Some(bmc_session_id) = state.session.as_ref().map(|s| s.bmc_session_id) else {
            return Ok(());
        };
        let deadline = Instant::now() + self.options.timeout.min(Duration::from_secs(2));
        // Best effort: the BMC times idle sessions out anyway.
        let _ = self
            .in_session(
                &mut state,
                commands::CLOSE_SESSION,
                bmc_session_id.to_le_bytes().to_vec(),
                deadline,
            )
            .await;
        state.session = None;
        Ok(())
    }
}

/// An unauthenticated request outside a session.
struct Sessionless<'a> {
    request: &'a Request,
    /// IPMI v1.5 framing (Get Channel Authentication Capabilities), else RMCP+.
    v15: bool,
}

impl Exchange for Sessionless<'_> {
    type Answer = Response;

    fn datagram(&mut self) -> Vec<u8> {
        let message = self.request.encode();
        if self.v15 {
            rmcp::encode_v15(&message)
        } else {
            rmcp::encode_v20_plain(PayloadType::Ipmi, &message)
        }
    }

    fn accept(&mut self, datagram: &[u8]) -> Option<Response> {
        let message = match rmcp::parse(datagram).ok()? {
            Packet::V15 { message, .. } => message,
            Packet::V20(p) if p.payload_type == PayloadType::Ipmi && !p.encrypted => p.payload,
            Packet::V20(_) => return None,
        };
        Response::parse(message)
            .ok()
            .filter(|r| self.request.is_answered_by(r))
    }
}

/// One RMCP+ handshake message and the reply it expects.
struct Handshake<F> {
    datagram: Vec<u8>,
    expect: PayloadType,
    parse: F,
}

impl<T, F: FnMut(&[u8]) -> Option<T>> Exchange for Handshake<F> {
    type Answer = T;

    fn datagram(&mut self) -> Vec<u8> {
        self.datagram.clone()
    }

    fn accept(&mut self, datagram: &[u8]) -> Option<T> {
        match rmcp::parse(datagram).ok()? {
            Packet::V20(p) if p.payload_type == self.expect && !p.encrypted => {
                (self.parse)(p.payload)
            }
            _ => None,
        }
    }
}

/// A request sealed in the session; each retransmission gets a new sequence number and IV.
struct InSession<'a> {
    session: &'a mut Session,
    request: &'a Request,
    encoded: Vec<u8>,
}

impl Exchange for InSession<'_> {
    type Answer = Response;

    fn datagram(&mut self) -> Vec<u8> {
        let s = &mut *self.session;
        let sequence = s.next_sequence;
        s.next_sequence = s.next_sequence.wrapping_add(1).max(1);
        s.keys.seal(
            PayloadType::Ipmi,
            s.bmc_session_id,
            sequence,
            &self.encoded,
            random::<16>(),
        )
    }

    fn accept(&mut self, datagram: &[u8]) -> Option<Response> {
        let Packet::V20(packet) = rmcp::parse(datagram).ok()? else {
            return None;
        };
        let s = &mut *self.session;
        if packet.payload_type != PayloadType::Ipmi || packet.session_id != s.console_session_id {
            return None;
        }
        let message = s.keys.open(&packet).ok()?;
        if !s.inbound.accept(packet.sequence) {
            return None;
        }
        Response::parse(&message)
            .ok()
            .filter(|r| self.request.is_answered_by(r))
    }
}

/// Random bytes for nonces, session IDs and IVs.
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        // The OS generator does not fail on supported platforms; never panic regardless, and
        // still make the bytes unpredictable enough not to repeat.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = CipherSuite::Suite17.hmac(&nanos.to_le_bytes(), &[&N.to_le_bytes()]);
        for (o, s) in out.iter_mut().zip(seed.iter().cycle()) {
            *o = *s;
        }
    }
    out
}

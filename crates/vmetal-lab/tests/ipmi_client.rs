//! Our IPMI client against our virtual IPMI BMC: the provisioning power/boot flow for cipher
//! suites 3, 17 and negotiated; bad credentials; unreachable BMCs; lost datagrams; restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::ipmi::{CipherSuite, IpmiBmc};
use vmetal_bmc::{
    Bmc, BmcError, BootDevice, BootModeOverride, BootOverride, ConnectOptions, Credentials,
    PowerAction, PowerState,
};
use vmetal_lab::ipmi::{IpmiService, RunningIpmi};
use vmetal_lab::{BootSource, ServerIdentity, SimulatedServer};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-pw";

async fn start_bmc(server: &SimulatedServer, bind: SocketAddr) -> RunningIpmi {
    IpmiService::start(bind, server.clone(), USER.into(), PASSWORD.into())
        .await
        .unwrap()
}

fn address(addr: SocketAddr, suite: Option<u8>) -> BmcAddress {
    let query = suite
        .map(|s| format!("?ciphersuite={s}"))
        .unwrap_or_default();
    BmcAddress::parse(&format!("ipmi://{addr}{query}")).unwrap()
}

fn client(addr: SocketAddr, suite: Option<u8>, password: &str, timeout: Duration) -> IpmiBmc {
    IpmiBmc::new(
        address(addr, suite),
        Credentials::new(USER, password),
        ConnectOptions {
            timeout,
            ..ConnectOptions::default()
        },
    )
    .unwrap()
}

async fn provisioning_flow(suite: Option<u8>, expected: CipherSuite) {
    let server = SimulatedServer::new(ServerIdentity::numbered(1));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    let c = client(bmc.local_addr(), suite, PASSWORD, Duration::from_secs(5));

    c.validate().await.unwrap();
    assert_eq!(c.session_cipher_suite().await, Some(expected));
    assert_eq!(c.power_state().await.unwrap(), PowerState::Off);

    c.power(PowerAction::On).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);

    let pxe = BootOverride::once(BootDevice::Pxe, Some(BootModeOverride::Uefi));
    c.set_boot_device(pxe).await.unwrap();
    assert_eq!(server.state().boot_override, Some(pxe));
    let flags = c.boot_flags().await.unwrap();
    assert!(flags.valid && flags.efi && !flags.persistent);

    c.power(PowerAction::ForceRestart).await.unwrap();
    let state = server.state();
    assert_eq!(state.last_boot, Some(BootSource::Pxe));
    assert_eq!(state.boot_override, None, "one-time override consumed");

    c.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::Off);

    let info = c.system_info().await.unwrap();
    assert_eq!(info.uuid.as_deref(), Some(server.identity().uuid.as_str()));
    assert_eq!(info.power_state, Some(PowerState::Off));
    assert_eq!(c.mc_info().await.unwrap().manufacturer_id, 32473);
    c.close().await.unwrap();
    assert_eq!(c.session_cipher_suite().await, None);
}

#[tokio::test]
async fn provisioning_flow_cipher_suite_3() {
    provisioning_flow(Some(3), CipherSuite::Suite3).await;
}

#[tokio::test]
async fn provisioning_flow_cipher_suite_17() {
    provisioning_flow(Some(17), CipherSuite::Suite17).await;
}

#[tokio::test]
async fn provisioning_flow_negotiates_the_strongest_suite() {
    provisioning_flow(None, CipherSuite::Suite17).await;
}

#[tokio::test]
async fn wrong_password_is_authentication_failed_quickly_and_secret_free() {
    let server = SimulatedServer::new(ServerIdentity::numbered(2));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    for suite in [Some(3), Some(17), None] {
        let c = client(
            bmc.local_addr(),
            suite,
            "hunter2-wrong",
            Duration::from_secs(10),
        );
        let started = Instant::now();
        let err = c.power(PowerAction::On).await.unwrap_err();
        assert!(
            matches!(err, BmcError::AuthenticationFailed { .. }),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let shown = format!("{err} {err:?} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    // An unknown user is refused by the BMC (RAKP 2 "unauthorized name").
    let c = IpmiBmc::new(
        address(bmc.local_addr(), None),
        Credentials::new("mallory", PASSWORD),
        ConnectOptions::default(),
    )
    .unwrap();
    let err = c.power_state().await.unwrap_err();
    assert!(
        matches!(err, BmcError::AuthenticationFailed { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains(PASSWORD));
    assert_eq!(server.power_state(), PowerState::Off);
}

#[tokio::test]
async fn unreachable_bmc_fails_within_the_configured_bound() {
    // A port nobody listens on: refused datagrams.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A port that swallows datagrams: silence.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for addr in [closed, silent.local_addr().unwrap()] {
        let c = client(addr, None, PASSWORD, Duration::from_millis(800));
        let started = Instant::now();
        let err = c.power_state().await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(err, BmcError::Timeout { .. } | BmcError::Unreachable { .. }),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert!(elapsed < Duration::from_millis(1300), "{elapsed:?}");
    }
}

#[tokio::test]
async fn half_the_datagrams_dropped_still_completes() {
    let server = SimulatedServer::new(ServerIdentity::numbered(3));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    server.faults().set_drop_fraction(0.5);
    let c = client(bmc.local_addr(), None, PASSWORD, Duration::from_secs(8));
    c.power(PowerAction::On).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
    c.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(server.power_state(), PowerState::Off);
}

#[tokio::test]
async fn session_is_reestablished_when_the_bmc_forgets_it() {
    let server = SimulatedServer::new(ServerIdentity::numbered(4));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    let addr = bmc.local_addr();
    let c = client(addr, Some(17), PASSWORD, Duration::from_secs(6));
    assert_eq!(c.power_state().await.unwrap(), PowerState::Off);

    // A BMC reboot: same port, no sessions.
    bmc.shutdown().await;
    let _bmc = start_bmc(&server, addr).await;
    c.power(PowerAction::On).await.unwrap();
    assert_eq!(server.power_state(), PowerState::On);
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
}

#[tokio::test]
async fn busy_bmc_reports_busy_after_bounded_retries() {
    let server = SimulatedServer::new(ServerIdentity::numbered(5));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    let c = client(bmc.local_addr(), Some(3), PASSWORD, Duration::from_secs(5));
    c.validate().await.unwrap();
    server.faults().set_busy_for(Duration::from_secs(30));
    let started = Instant::now();
    let err = c.power(PowerAction::On).await.unwrap_err();
    assert!(matches!(err, BmcError::Busy { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.power_state(), PowerState::Off);
    server.faults().clear();
    c.power(PowerAction::On).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sessions_on_one_bmc() {
    let server = SimulatedServer::new(ServerIdentity::numbered(6));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    let addr = bmc.local_addr();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let suite = if i % 2 == 0 { Some(3) } else { Some(17) };
                let c = client(addr, suite, PASSWORD, Duration::from_secs(8));
                c.power_state().await?;
                c.power_state().await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), PowerState::Off);
    }
}

#[tokio::test]
async fn privilege_level_comes_from_the_address() {
    let server = SimulatedServer::new(ServerIdentity::numbered(8));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    let with = |level: &str| {
        IpmiBmc::new(
            BmcAddress::parse(&format!(
                "ipmi://{}?privilegelevel={level}",
                bmc.local_addr()
            ))
            .unwrap(),
            Credentials::new(USER, PASSWORD),
            ConnectOptions::default(),
        )
        .unwrap()
    };
    // USER may look but not touch.
    let user = with("user");
    assert_eq!(user.power_state().await.unwrap(), PowerState::Off);
    let err = user.power(PowerAction::On).await.unwrap_err();
    match &err {
        BmcError::Rejected { message, .. } => assert!(message.contains("0xd4"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.power_state(), PowerState::Off);
    // OPERATOR may power on.
    with("operator").power(PowerAction::On).await.unwrap();
    assert_eq!(server.power_state(), PowerState::On);
}

/// Relays datagrams between a client and a BMC, mangling every answer: truncated, a byte
/// flipped, or replaced by garbage.
async fn mangling_proxy(target: SocketAddr) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(target).await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                continue;
            };
            let _ = back.send(&buf[..n]).await;
            let Ok(Ok(m)) =
                tokio::time::timeout(Duration::from_millis(200), back.recv(&mut buf)).await
            else {
                continue;
            };
            let mut answer = buf[..m].to_vec();
            match next() % 3 {
                0 => answer.truncate(next() as usize % m),
                1 => {
                    let i = next() as usize % m;
                    answer[i] ^= 1 << (next() % 8);
                }
                _ => answer.iter_mut().for_each(|b| *b = next() as u8),
            }
            let _ = front.send_to(&answer, client).await;
        }
    });
    addr
}

#[tokio::test]
async fn mangled_answers_never_panic_the_client() {
    let server = SimulatedServer::new(ServerIdentity::numbered(9));
    let bmc = start_bmc(&server, "127.0.0.1:0".parse().unwrap()).await;
    let proxy = mangling_proxy(bmc.local_addr()).await;
    for suite in [Some(3), Some(17), None] {
        let c = client(proxy, suite, PASSWORD, Duration::from_millis(700));
        let started = Instant::now();
        // Whatever gets through, the client answers within its bound and never panics.
        let _ = c.power_state().await;
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
}

//! Our Redfish client against our virtual Redfish BMC: the provisioning power/boot sequence over
//! HTTP and HTTPS, discovery, authentication, timeouts, retries and virtual media.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::redfish::RedfishBmc;
use vmetal_bmc::{
    Bmc, BmcError, BootDevice, BootModeOverride, BootOverride, ConnectOptions, Credentials,
    PowerAction, PowerState,
};
use vmetal_lab::redfish::{RedfishConfig, RedfishService, RunningRedfish};
use vmetal_lab::{BootSource, ServerIdentity, SimulatedServer};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-Pa55";

fn servers(n: u32) -> Vec<SimulatedServer> {
    (0..n)
        .map(|i| SimulatedServer::new(ServerIdentity::numbered(i)))
        .collect()
}

async fn lab(n: u32, tls: bool) -> (RunningRedfish, Vec<SimulatedServer>) {
    let systems = servers(n);
    let config = RedfishConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        tls,
    };
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = RedfishService::start(bind, systems.clone(), config)
        .await
        .unwrap();
    (running, systems)
}

/// The BareMetalHost address of `path` on the lab service.
fn address(running: &RunningRedfish, path: &str) -> BmcAddress {
    let base = running.base_url();
    let (scheme, rest) = base.split_once("://").unwrap();
    BmcAddress::parse(&format!("redfish+{scheme}://{rest}{path}")).unwrap()
}

fn options() -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(3),
        retries: 2,
        ..ConnectOptions::default()
    }
}

fn client(address: BmcAddress, password: &str, options: ConnectOptions) -> RedfishBmc {
    RedfishBmc::new(address, Credentials::new(USER, password), options).unwrap()
}

/// power on → PXE once (UEFI) → reset → power off, checked on the simulated server.
async fn provisioning_sequence(bmc: &RedfishBmc, server: &SimulatedServer) {
    bmc.validate().await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    assert_eq!(server.state().last_boot, Some(BootSource::Disk));

    let pxe = BootOverride::once(BootDevice::Pxe, Some(BootModeOverride::Uefi));
    bmc.set_boot_device(pxe).await.unwrap();
    let state = server.state();
    let pending = state.boot_override.map(|b| (b.device, b.persistent));
    assert_eq!(pending, Some((BootDevice::Pxe, false)));
    assert_eq!(state.boot_mode, BootModeOverride::Uefi);

    bmc.power(PowerAction::ForceRestart).await.unwrap();
    let state = server.state();
    assert_eq!(state.last_boot, Some(BootSource::Pxe));
    assert_eq!(state.boot_mode, BootModeOverride::Uefi);
    assert_eq!(state.boot_override, None, "a one-time override is consumed");
    assert_eq!(state.boot_count, 2);

    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(server.power_state(), PowerState::Off);
}

#[tokio::test]
async fn provisioning_sequence_over_plain_http() {
    let (running, systems) = lab(2, false).await;
    let bmc = client(
        address(&running, "/redfish/v1/Systems/2"),
        PASSWORD,
        options(),
    );
    provisioning_sequence(&bmc, &systems[1]).await;
    assert_eq!(
        systems[0].state().boot_count,
        0,
        "only system 2 was touched"
    );
    assert_eq!(running.open_sessions(), 1);
    bmc.close().await.unwrap();
    assert_eq!(running.open_sessions(), 0, "close() deletes the session");
}

#[tokio::test]
async fn provisioning_sequence_over_https_without_verification() {
    let (running, systems) = lab(1, true).await;
    let options = ConnectOptions {
        disable_certificate_verification: true,
        ..options()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    provisioning_sequence(&bmc, &systems[0]).await;
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn provisioning_sequence_over_https_trusting_the_test_ca() {
    let (running, systems) = lab(1, true).await;
    let options = ConnectOptions {
        ca_certificates_pem: vec![running.ca_certificate_pem().unwrap()],
        ..options()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    provisioning_sequence(&bmc, &systems[0]).await;
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn https_with_verification_refuses_an_untrusted_certificate() {
    let (running, systems) = lab(1, true).await;
    let options = ConnectOptions {
        retries: 5,
        ..options()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    let started = Instant::now();
    let err = bmc.power(PowerAction::On).await.unwrap_err();
    match &err {
        BmcError::Unreachable { reason, .. } => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Five retries would back off for 3.1 s: a certificate failure is not retried.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a TLS failure is not retried"
    );
    assert_eq!(systems[0].power_state(), PowerState::Off);
}

#[tokio::test]
async fn the_only_system_is_discovered_when_the_address_has_no_path() {
    let (running, systems) = lab(1, false).await;
    let bmc = client(address(&running, ""), PASSWORD, options());
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(systems[0].power_state(), PowerState::On);
    let info = bmc.system_info().await.unwrap();
    let identity = systems[0].identity();
    assert_eq!(
        info.serial_number.as_deref(),
        Some(identity.serial_number.as_str())
    );
    assert_eq!(info.uuid.as_deref(), Some(identity.uuid.as_str()));
    assert_eq!(info.manufacturer.as_deref(), Some("vmetal"));
    assert_eq!(info.bios_version.as_deref(), Some("1.0.0"));
    assert_eq!(info.power_state, Some(PowerState::On));
}

#[tokio::test]
async fn discovery_with_several_systems_names_the_count() {
    let (running, _systems) = lab(3, false).await;
    let bmc = client(address(&running, ""), PASSWORD, options());
    let err = bmc.power_state().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("manages 3 systems"), "{text}");
    assert!(
        text.contains(&running.local_addr().port().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_password_is_authentication_failed_without_the_password() {
    let (running, systems) = lab(1, false).await;
    let wrong = "not-the-Pa55word";
    let bmc = client(address(&running, "/redfish/v1/Systems/1"), wrong, options());
    let started = Instant::now();
    let err = bmc.power(PowerAction::On).await.unwrap_err();
    assert!(
        matches!(err, BmcError::AuthenticationFailed { .. }),
        "{err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(wrong) && !shown.contains(PASSWORD),
        "{shown}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "4xx is never retried"
    );
    assert_eq!(systems[0].power_state(), PowerState::Off);
}

#[tokio::test]
async fn a_closed_port_is_unreachable_within_the_bound() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
    let options = ConnectOptions {
        timeout: Duration::from_millis(300),
        retries: 1,
        ..ConnectOptions::default()
    };
    let bmc = client(address, PASSWORD, options);
    let started = Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_listener_that_never_answers_times_out_within_the_bound() {
    // Accepted by the kernel, never read: the request hangs until our timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
    let timeout = Duration::from_millis(300);
    let retries = 1;
    let options = ConnectOptions {
        timeout,
        retries,
        ..ConnectOptions::default()
    };
    let bmc = client(address, PASSWORD, options);
    let started = Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, BmcError::Timeout { after, .. } if after == timeout),
        "{err:?}"
    );
    // (retries + 1) attempts of `timeout`, one 100 ms backoff, and slack for a busy machine.
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(
        elapsed < timeout * (retries + 1) + Duration::from_millis(900),
        "{elapsed:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn a_dropping_bmc_times_out() {
    let (running, systems) = lab(1, false).await;
    systems[0].faults().set_drop_fraction(1.0);
    let options = ConnectOptions {
        timeout: Duration::from_millis(300),
        retries: 0,
        ..ConnectOptions::default()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    let started = Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    assert!(matches!(err, BmcError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_bmc_answering_503_half_the_time_still_completes_through_retries() {
    let (running, systems) = lab(1, false).await;
    running.set_fail_status(503);
    systems[0].faults().set_fail_fraction(0.5);
    let options = ConnectOptions {
        timeout: Duration::from_secs(2),
        retries: 12,
        ..ConnectOptions::default()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    // Each call is a GET of the system and a POST of the reset: about 4 faulted requests, so
    // some are all but sure to fail and be retried.
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(systems[0].power_state(), PowerState::On);
    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(systems[0].power_state(), PowerState::Off);
}

#[tokio::test]
async fn a_busy_bmc_without_retries_reports_busy() {
    let (running, systems) = lab(1, false).await;
    systems[0].faults().set_busy_for(Duration::from_secs(60));
    let options = ConnectOptions {
        retries: 0,
        ..options()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    let err = bmc.power_state().await.unwrap_err();
    assert!(matches!(err, BmcError::Busy { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_500_after_retries_is_rejected_with_the_bmc_message() {
    let (running, systems) = lab(1, false).await;
    systems[0].faults().set_fail_fraction(1.0);
    let options = ConnectOptions {
        retries: 1,
        ..options()
    };
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options,
    );
    let err = bmc.power_state().await.unwrap_err();
    match err {
        BmcError::Rejected { message, .. } => {
            assert!(message.contains("HTTP 500"), "{message}");
            assert!(message.contains("injected fault"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn virtual_media_insert_and_eject() {
    let (running, systems) = lab(2, false).await;
    let bmc = client(
        address(&running, "/redfish/v1/Systems/2"),
        PASSWORD,
        options(),
    );
    let iso = "http://images.example/agent.iso";
    bmc.insert_virtual_media(iso).await.unwrap();
    assert_eq!(systems[1].state().virtual_media.as_deref(), Some(iso));
    // Inserting the same image again is a no-op; another one replaces it.
    bmc.insert_virtual_media(iso).await.unwrap();
    let other = "http://images.example/other.iso";
    bmc.insert_virtual_media(other).await.unwrap();
    assert_eq!(systems[1].state().virtual_media.as_deref(), Some(other));
    assert_eq!(systems[0].state().virtual_media, None);

    let legacy_cd = BootOverride::once(BootDevice::Cd, Some(BootModeOverride::Legacy));
    bmc.set_boot_device(legacy_cd).await.unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    let state = systems[1].state();
    assert_eq!(state.last_boot, Some(BootSource::Cd(Some(other.into()))));
    assert_eq!(state.boot_mode, BootModeOverride::Legacy);

    bmc.eject_virtual_media().await.unwrap();
    assert_eq!(systems[1].state().virtual_media, None);
    bmc.eject_virtual_media().await.unwrap();
}

/// A plain reqwest client (ring provider) for poking the lab service directly.
fn raw_http() -> reqwest::Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_expired_session_is_replaced_by_logging_in_again() {
    let (running, systems) = lab(1, false).await;
    let bmc = client(
        address(&running, "/redfish/v1/Systems/1"),
        PASSWORD,
        options(),
    );
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(running.open_sessions(), 1);
    // The BMC forgets the session (as after a BMC reboot): the client gets 401 and logs in again.
    let deleted = raw_http()
        .delete(format!(
            "{}/redfish/v1/SessionService/Sessions/1",
            running.base_url()
        ))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(running.open_sessions(), 0);
    bmc.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(systems[0].power_state(), PowerState::Off);
    assert_eq!(running.open_sessions(), 1);
    bmc.close().await.unwrap();
    assert_eq!(running.open_sessions(), 0);
}

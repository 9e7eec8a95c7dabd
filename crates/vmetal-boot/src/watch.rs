//! Keeps the known-hosts set in step with the BareMetalHosts in the cluster: a kube watcher
//! and reflector, and a fresh [`KnownHosts`] swapped in after every change.

use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use vmetal_api::BareMetalHost;

use crate::hosts::{HostsHandle, KnownHosts};

/// Watches BareMetalHosts (in `namespace`, or everywhere) and updates `hosts` until the task
/// is dropped. Watch errors are logged and retried with backoff; the last good set stays.
pub async fn watch_hosts(client: kube::Client, namespace: Option<String>, hosts: HostsHandle) {
    let api: Api<BareMetalHost> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => {
                let state = reader.state();
                let (set, problems) = KnownHosts::from_hosts(state.iter().map(|h| h.as_ref()));
                for problem in problems {
                    tracing::warn!("{problem}");
                }
                tracing::debug!(macs = set.len(), "known hosts updated");
                hosts.replace(set);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching BareMetalHosts failed; retrying"),
        }
    }
}

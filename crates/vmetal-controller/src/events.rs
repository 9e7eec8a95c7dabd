//! Kubernetes Events about hosts, written as `core/v1` Events (what `kubectl get events` and
//! `kubectl describe bmh` read), one object per host, reason and message, with a running count.
//!
//! Best effort: failing to record an event never fails a reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// CamelCase reason (`InspectionComplete`).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// The component name events carry.
pub const COMPONENT: &str = "vmetal-controller";

/// A stable name per object, reason and message, so repeats bump a count instead of piling up.
fn event_name(object: &str, reason: &str, message: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in reason.bytes().chain([0]).chain(message.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{object}.{hash:016x}")
}

/// Record `event` about `object` (its namespace is where the Event goes).
pub async fn record(client: &kube::Client, object: &ObjectReference, event: &HostEvent) {
    let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let name = event_name(
        object.name.as_deref().unwrap_or("object"),
        &event.reason,
        &event.message,
    );
    let now = k8s_openapi::jiff::Timestamp::now();
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: object.clone(),
        reason: Some(event.reason.clone()),
        message: Some(event.message.clone()),
        type_: Some(match event.kind {
            EventKind::Normal => "Normal".into(),
            EventKind::Warning => "Warning".into(),
        }),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: std::env::var("HOSTNAME").ok(),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(event.reason.clone()),
        count: Some(1),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ev).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let count = api
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|e| e.count)
                .unwrap_or(1);
            let patch = json!({"count": count + 1, "lastTimestamp": Time(now)});
            if let Err(err) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                tracing::debug!(%err, "cannot update event {name}");
            }
        }
        Err(err) => tracing::debug!(%err, "cannot record event {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        let a = event_name("server-1", "PowerOn", "powered on");
        assert_eq!(a, event_name("server-1", "PowerOn", "powered on"));
        assert_ne!(a, event_name("server-1", "PowerOff", "powered on"));
        assert!(a.starts_with("server-1."));
    }
}

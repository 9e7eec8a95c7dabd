//! Which host a Machine gets: candidate filtering, smallest-fit ordering and the reason a
//! Machine stays unscheduled (pure), plus the compare-and-swap claim on `spec.consumerRef`.
//!
//! The claim is a `replace` carrying the resourceVersion the candidate was read at, so two
//! Machines can never both win one host (Metal3 CAPM3 issue #1004); a 409 re-reads the host.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use vmetal_api::host::annotations::MACHINE_LABEL;
use vmetal_api::requirements::size_key;
use vmetal_api::selector::selector_matches;
use vmetal_api::{BareMetalHost, Machine};

/// Why no host could be picked; each maps to a `Scheduled=False` condition reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unschedulable {
    /// No host in the namespace carries labels the selector accepts.
    NoMatchingHosts {
        /// Hosts in the namespace.
        hosts: usize,
    },
    /// Hosts match the selector, but every inspected one lacks the hardware.
    RequirementsExceedEveryHost {
        /// Hosts that match the selector.
        matching: usize,
        /// The shortfalls of the closest host, `host: needs 8 GPUs, has 4`.
        closest: String,
    },
    /// Matching hosts exist but none is free right now.
    AllMatchingHostsBusy {
        /// Hosts that match selector and requirements (or are not inspected yet).
        matching: usize,
    },
}

impl Unschedulable {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoMatchingHosts { .. } => "NoMatchingHosts",
            Self::RequirementsExceedEveryHost { .. } => "RequirementsExceedEveryHost",
            Self::AllMatchingHostsBusy { .. } => "AllMatchingHostsBusy",
        }
    }

    /// A message that names the fix.
    pub fn message(&self) -> String {
        match self {
            Self::NoMatchingHosts { hosts } => format!(
                "no BareMetalHost in the namespace matches spec.hostSelector ({hosts} hosts \
                 checked); label a host or change the selector"
            ),
            Self::RequirementsExceedEveryHost { matching, closest } => format!(
                "spec.requirements exceed every one of the {matching} hosts matching the \
                 selector (closest: {closest}); lower the requirements or add hardware"
            ),
            Self::AllMatchingHostsBusy { matching } => format!(
                "all {matching} matching hosts are busy (claimed, not yet available, paused or \
                 in error); waiting for one to be released"
            ),
        }
    }
}

/// Fewest shortfalls first, then the largest host.
type ClosestRank = (usize, std::cmp::Reverse<(bool, i64, i64, i64)>);

/// The `consumerRef` a claim by `machine` writes.
pub fn consumer_ref(machine: &Machine) -> ObjectReference {
    ObjectReference {
        api_version: Some(Machine::api_version(&()).into_owned()),
        kind: Some(Machine::kind(&()).into_owned()),
        name: Some(machine.name_any()),
        namespace: machine.namespace(),
        uid: machine.uid(),
        ..Default::default()
    }
}

/// Whether `host`'s consumerRef is `machine` (kind, group, namespace, name; uid when both have
/// one, so a re-created Machine of the same name is not mistaken for the old one).
pub fn is_consumer(host: &BareMetalHost, machine: &Machine) -> bool {
    let Some(r) = host.spec.consumer_ref.as_ref() else {
        return false;
    };
    let group_ok = r
        .api_version
        .as_deref()
        .is_some_and(|v| v.split('/').next() == Some(Machine::group(&()).as_ref()));
    let uid_ok = match (r.uid.as_deref(), machine.uid()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    r.kind.as_deref() == Some("Machine")
        && group_ok
        && r.name.as_deref() == Some(machine.name_any().as_str())
        && r.namespace.as_deref().unwrap_or_default()
            == machine.namespace().unwrap_or_default().as_str()
        && uid_ok
}

/// Whether a host can be claimed by anyone now: available, unclaimed, not paused, no error,
/// not being deleted.
pub fn is_free(host: &BareMetalHost) -> bool {
    host.provisioning_state().is_available()
        && !host.is_claimed()
        && !host.is_paused()
        && !host.has_error()
        && host.metadata.deletion_timestamp.is_none()
}

/// Whether `host` meets `machine`'s selector and hardware requirements (ignoring availability).
/// The spec must have been validated; an invalid selector matches nothing.
pub fn fits(host: &BareMetalHost, machine: &Machine) -> bool {
    let selector_ok = machine
        .spec
        .host_selector
        .as_ref()
        .is_none_or(|s| selector_matches(s, host.labels()).unwrap_or(false));
    let hardware_ok = machine
        .spec
        .requirements
        .as_ref()
        .is_none_or(|r| r.fits(host.hardware()).unwrap_or(false));
    selector_ok && hardware_ok
}

/// The hosts `machine` could claim now, best first: smallest fit by
/// [`size_key`] (fewest GPUs, then CPUs, then memory), ties broken by host name.
/// Empty means unschedulable, and the error says why.
pub fn candidates(
    hosts: &[Arc<BareMetalHost>],
    machine: &Machine,
) -> Result<Vec<Arc<BareMetalHost>>, Unschedulable> {
    let ns = machine.namespace().unwrap_or_default();
    let in_ns: Vec<&Arc<BareMetalHost>> = hosts
        .iter()
        .filter(|h| h.namespace().unwrap_or_default() == ns)
        .collect();
    let selected: Vec<&Arc<BareMetalHost>> = in_ns
        .iter()
        .copied()
        .filter(|h| {
            machine
                .spec
                .host_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, h.labels()).unwrap_or(false))
        })
        .collect();
    if selected.is_empty() {
        return Err(Unschedulable::NoMatchingHosts { hosts: in_ns.len() });
    }
    let requirements = machine.spec.requirements.clone().unwrap_or_default();
    // Hosts not inspected yet might still fit: they count as busy, not as too small.
    // Closest = fewest shortfalls, then the most capable host.
    let mut closest: Option<(ClosestRank, String)> = None;
    let mut possible = 0usize;
    let mut free = Vec::new();
    for host in &selected {
        let shortfalls = requirements.shortfalls(host.hardware()).unwrap_or_default();
        let uninspected = host.hardware().is_none();
        if !shortfalls.is_empty() && !uninspected {
            let text = shortfalls
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let rank = (
                shortfalls.len(),
                std::cmp::Reverse(size_key(host.hardware())),
            );
            if closest.as_ref().is_none_or(|(r, _)| rank < *r) {
                closest = Some((rank, format!("{}: {text}", host.name_any())));
            }
            continue;
        }
        possible += 1;
        if shortfalls.is_empty() && is_free(host) {
            free.push(Arc::clone(host));
        }
    }
    if possible == 0 {
        return Err(Unschedulable::RequirementsExceedEveryHost {
            matching: selected.len(),
            closest: closest.map(|(_, t)| t).unwrap_or_default(),
        });
    }
    if free.is_empty() {
        return Err(Unschedulable::AllMatchingHostsBusy { matching: possible });
    }
    free.sort_by(|a, b| {
        size_key(a.hardware())
            .cmp(&size_key(b.hardware()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    Ok(free)
}

/// `host` with `machine` written as its consumer (consumerRef and the machine label).
pub fn claimed_copy(host: &BareMetalHost, machine: &Machine) -> BareMetalHost {
    let mut h = host.clone();
    h.spec.consumer_ref = Some(consumer_ref(machine));
    h.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(MACHINE_LABEL.into(), machine.name_any());
    h
}

/// In-process hint of hosts another reconcile of this controller is claiming (or just claimed,
/// before the watch cache shows it). Only reorders candidates so concurrent reconciles do not
/// all contend for the same host; the resourceVersion check alone decides who wins.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Host key → when it was reserved and the resourceVersion our claim wrote, if known.
    held: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Option<u64>)>>,
}

fn rv_of(h: &BareMetalHost) -> Option<u64> {
    h.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
}

/// How long a successful claim stays reserved (the watch cache catches up well before).
const RESERVATION_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl Reservations {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, (std::time::Instant, Option<u64>)>,
    > {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is reserved, as seen in a cache copy at `seen_rv`: a copy newer than our
    /// claim (the host was released since) is not held any more.
    pub fn is_held(&self, key: &str, seen_rv: Option<u64>) -> bool {
        self.lock().get(key).is_some_and(|(t, claimed_rv)| {
            t.elapsed() < RESERVATION_TTL
                && match (claimed_rv, seen_rv) {
                    (Some(claimed), Some(seen)) => seen <= *claimed,
                    _ => true,
                }
        })
    }

    fn hold(&self, key: &str) {
        self.lock()
            .insert(key.to_string(), (std::time::Instant::now(), None));
    }

    fn claimed_at(&self, key: &str, rv: Option<u64>) {
        self.lock()
            .insert(key.to_string(), (std::time::Instant::now(), rv));
    }

    fn drop_hold(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// How many times one candidate is re-read after a conflict before moving to the next.
const REREADS_PER_HOST: usize = 3;

/// Claim the first candidate that is still free when written. Every write is a `replace` with
/// the resourceVersion the host was read at; on 409 the host is read again and, if it is still
/// free and still fits, tried again, else the next candidate is tried. `Ok(None)` means every
/// candidate was taken by someone else meanwhile.
pub async fn claim(
    api: &Api<BareMetalHost>,
    candidates: &[Arc<BareMetalHost>],
    machine: &Machine,
    reservations: &Reservations,
) -> Result<Option<BareMetalHost>, kube::Error> {
    let key = |h: &BareMetalHost| format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any());
    // Hosts someone else here is claiming go last, in their original order.
    let (free, held): (Vec<_>, Vec<_>) = candidates
        .iter()
        .partition(|h| !reservations.is_held(&key(h), rv_of(h)));
    for candidate in free.into_iter().chain(held) {
        let host_key = key(candidate);
        reservations.hold(&host_key);
        let result = claim_one(api, candidate, machine).await;
        match &result {
            Ok(Some(host)) => {
                reservations.claimed_at(&host_key, rv_of(host));
                return result;
            }
            _ => reservations.drop_hold(&host_key),
        }
        result?;
    }
    Ok(None)
}

async fn claim_one(
    api: &Api<BareMetalHost>,
    candidate: &BareMetalHost,
    machine: &Machine,
) -> Result<Option<BareMetalHost>, kube::Error> {
    let mut current: BareMetalHost = candidate.clone();
    for _ in 0..REREADS_PER_HOST {
        if !is_free(&current) || !fits(&current, machine) {
            break;
        }
        let name = current.name_any();
        let claimed = claimed_copy(&current, machine);
        match api.replace(&name, &PostParams::default(), &claimed).await {
            Ok(host) => return Ok(Some(host)),
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
                Some(fresh) => current = fresh,
                None => break,
            },
            Err(kube::Error::Api(s)) if s.code == 404 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use vmetal_api::hardware::{Cpu, GpuSummary, HardwareDetails};
    use vmetal_api::requirements::{GpuRequirement, HardwareRequirements};
    use vmetal_api::{BareMetalHostStatus, ProvisioningState};

    fn host(name: &str, cpus: i32, gpus: i32, labels: &[(&str, &str)]) -> Arc<BareMetalHost> {
        let mut h = BareMetalHost::new(name, Default::default());
        h.metadata.namespace = Some("default".into());
        h.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let mut status = BareMetalHostStatus::default();
        status.provisioning.state = ProvisioningState::Available;
        status.hardware = Some(HardwareDetails {
            cpu: Some(Cpu {
                count: cpus,
                ..Default::default()
            }),
            ram_mebibytes: i64::from(cpus) * 4096,
            gpus: if gpus > 0 {
                vec![GpuSummary {
                    vendor: "NVIDIA".into(),
                    model: "H100 SXM5 80GB".into(),
                    count: gpus,
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        });
        h.status = Some(status);
        Arc::new(h)
    }

    fn machine(selector: Option<(&str, &str)>, gpus: i32) -> Machine {
        let mut m = Machine::new("m1", Default::default());
        m.metadata.namespace = Some("default".into());
        m.metadata.uid = Some("uid-1".into());
        m.spec.host_selector = selector.map(|(k, v)| LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            ..Default::default()
        });
        if gpus > 0 {
            m.spec.requirements = Some(HardwareRequirements {
                gpus: Some(GpuRequirement {
                    count: gpus,
                    vendor: Some("nvidia".into()),
                    model: None,
                }),
                ..Default::default()
            });
        }
        m
    }

    fn names(v: &[Arc<BareMetalHost>]) -> Vec<String> {
        v.iter().map(|h| h.name_any()).collect()
    }

    #[test]
    fn smallest_fit_first_gpu_hosts_last_ties_by_name() {
        let hosts = vec![
            host("gpu-a", 64, 4, &[]),
            host("big", 128, 0, &[]),
            host("small-b", 8, 0, &[]),
            host("small-a", 8, 0, &[]),
        ];
        let got = candidates(&hosts, &machine(None, 0)).unwrap();
        assert_eq!(names(&got), ["small-a", "small-b", "big", "gpu-a"]);
        // A GPU Machine only gets GPU hosts.
        let got = candidates(&hosts, &machine(None, 2)).unwrap();
        assert_eq!(names(&got), ["gpu-a"]);
    }

    #[test]
    fn claimed_paused_errored_deleting_and_unavailable_hosts_are_skipped() {
        let mut claimed = (*host("a", 8, 0, &[])).clone();
        claimed.spec.consumer_ref = Some(ObjectReference {
            name: Some("other".into()),
            ..Default::default()
        });
        let mut paused = (*host("b", 8, 0, &[])).clone();
        paused.metadata.annotations = Some(
            [(
                vmetal_api::host::annotations::PAUSED.to_string(),
                String::new(),
            )]
            .into(),
        );
        let mut errored = (*host("c", 8, 0, &[])).clone();
        errored.status.as_mut().unwrap().error_message = "boom".into();
        let mut deleting = (*host("d", 8, 0, &[])).clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let mut provisioning = (*host("e", 8, 0, &[])).clone();
        provisioning.status.as_mut().unwrap().provisioning.state = ProvisioningState::Provisioning;
        let hosts: Vec<Arc<BareMetalHost>> = [claimed, paused, errored, deleting, provisioning]
            .into_iter()
            .map(Arc::new)
            .collect();
        let err = candidates(&hosts, &machine(None, 0)).unwrap_err();
        assert_eq!(err, Unschedulable::AllMatchingHostsBusy { matching: 5 });
        assert_eq!(err.reason(), "AllMatchingHostsBusy");
        let mut with_free = hosts.clone();
        with_free.push(host("z", 8, 0, &[]));
        assert_eq!(
            names(&candidates(&with_free, &machine(None, 0)).unwrap()),
            ["z"]
        );
    }

    #[test]
    fn pending_reasons_say_why() {
        let hosts = vec![host("a", 8, 0, &[("rack", "r1")]), host("b", 16, 2, &[])];
        let err = candidates(&hosts, &machine(Some(("rack", "r9")), 0)).unwrap_err();
        assert_eq!(err, Unschedulable::NoMatchingHosts { hosts: 2 });
        assert!(err.message().contains("spec.hostSelector"));

        let err = candidates(&hosts, &machine(None, 8)).unwrap_err();
        assert_eq!(err.reason(), "RequirementsExceedEveryHost");
        assert!(
            err.message().contains("needs 8 matching GPUs, has 2"),
            "{}",
            err.message()
        );

        let got = candidates(&hosts, &machine(Some(("rack", "r1")), 0)).unwrap();
        assert_eq!(names(&got), ["a"]);
    }

    #[test]
    fn hosts_in_other_namespaces_are_ignored() {
        let mut other = (*host("a", 8, 0, &[])).clone();
        other.metadata.namespace = Some("elsewhere".into());
        let err = candidates(&[Arc::new(other)], &machine(None, 0)).unwrap_err();
        assert_eq!(err, Unschedulable::NoMatchingHosts { hosts: 0 });
    }

    #[test]
    fn uninspected_hosts_count_as_busy_not_too_small() {
        let mut h = (*host("new", 8, 0, &[])).clone();
        let st = h.status.as_mut().unwrap();
        st.hardware = None;
        st.provisioning.state = ProvisioningState::Inspecting;
        let err = candidates(&[Arc::new(h)], &machine(None, 1)).unwrap_err();
        assert_eq!(err, Unschedulable::AllMatchingHostsBusy { matching: 1 });
    }

    #[test]
    fn consumer_identity_checks_kind_name_namespace_and_uid() {
        let m = machine(None, 0);
        let claimed = claimed_copy(&host("a", 8, 0, &[]), &m);
        assert!(is_consumer(&claimed, &m));
        assert_eq!(
            claimed.labels().get(MACHINE_LABEL).map(String::as_str),
            Some("m1")
        );
        let mut recreated = m.clone();
        recreated.metadata.uid = Some("uid-2".into());
        assert!(!is_consumer(&claimed, &recreated));
        let mut other_ns = m.clone();
        other_ns.metadata.namespace = Some("x".into());
        assert!(!is_consumer(&claimed, &other_ns));
        assert!(!is_free(&claimed));
    }
}

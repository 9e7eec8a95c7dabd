//! `status.conditions` of a host, derived from its state and error: `Ready`, `Provisioned`,
//! `AvailableForProvisioning`, `Progressing` and `Healthy`, as Metal3 reports them.
//!
//! Pure: the previous conditions go in, the new ones come out, and a condition's
//! `lastTransitionTime` changes only when its status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use vmetal_api::{BareMetalHostStatus, ProvisioningState};

fn cond(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// The conditions for `status`, keeping transition times of unchanged ones from `previous`.
pub fn derive(
    status: &BareMetalHostStatus,
    claimed: bool,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    use ProvisioningState as S;
    let state = status.provisioning.state;
    let error = status.error_type;
    let healthy = error.is_none();
    let stable = matches!(
        state,
        S::Available | S::Ready | S::Provisioned | S::ExternallyProvisioned
    );
    let state_name = if state == S::None {
        "new"
    } else {
        state.as_str()
    };
    let mut next = vec![
        cond(
            "Ready",
            stable && healthy,
            if stable && healthy {
                "Ready"
            } else {
                "NotReady"
            },
            format!("host is {state_name}"),
        ),
        cond(
            "Provisioned",
            matches!(state, S::Provisioned | S::ExternallyProvisioned),
            if matches!(state, S::Provisioned | S::ExternallyProvisioned) {
                "Provisioned"
            } else {
                "NotProvisioned"
            },
            status
                .provisioning
                .image
                .as_ref()
                .map(|i| format!("image {}", i.url))
                .unwrap_or_default(),
        ),
        cond(
            "AvailableForProvisioning",
            state.is_available() && healthy && !claimed,
            if !state.is_available() {
                "NotAvailable"
            } else if claimed {
                "Claimed"
            } else if !healthy {
                "Error"
            } else {
                "Available"
            },
            String::new(),
        ),
        cond(
            "Progressing",
            state.is_busy()
                || matches!(
                    state,
                    S::Registering | S::PoweringOffBeforeDelete | S::Deleting
                ),
            "StateMachine",
            format!("host is {state_name}"),
        ),
        cond(
            "Healthy",
            healthy,
            error.map_or("Healthy", |_| "Error"),
            error
                .map(|e| format!("{e}: {}", status.error_message))
                .unwrap_or_default(),
        ),
    ];
    for c in &mut next {
        c.observed_generation = generation;
        c.last_transition_time = status
            .conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
    }
    next
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmetal_api::ErrorType;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn available_unclaimed_host_is_ready_and_available() {
        let mut s = BareMetalHostStatus::default();
        s.provisioning.state = ProvisioningState::Available;
        let c = derive(&s, false, Some(3), t(10));
        let get = |n: &str| c.iter().find(|c| c.type_ == n).unwrap().status.clone();
        assert_eq!(get("Ready"), "True");
        assert_eq!(get("AvailableForProvisioning"), "True");
        assert_eq!(get("Provisioned"), "False");
        assert_eq!(get("Healthy"), "True");
        assert_eq!(c[0].observed_generation, Some(3));
    }

    #[test]
    fn transition_time_moves_only_on_change() {
        let mut s = BareMetalHostStatus::default();
        s.provisioning.state = ProvisioningState::Available;
        s.conditions = derive(&s, false, None, t(10));
        let again = derive(&s, false, None, t(20));
        assert!(again.iter().all(|c| c.last_transition_time == t(10)));
        s.error_type = Some(ErrorType::PowerManagementError);
        s.error_message = "BMC down".into();
        let failed = derive(&s, false, None, t(30));
        let healthy = failed.iter().find(|c| c.type_ == "Healthy").unwrap();
        assert_eq!(healthy.status, "False");
        assert_eq!(healthy.last_transition_time, t(30));
        assert!(healthy.message.contains("BMC down"));
        let provisioned = failed.iter().find(|c| c.type_ == "Provisioned").unwrap();
        assert_eq!(provisioned.last_transition_time, t(10));
    }
}

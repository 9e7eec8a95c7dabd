//! Whether to answer an ICMPv6 message: solicitations from known hosts are answered unless a
//! real router has advertised lately (then it answers, not us). Pure: time and the host
//! lookup come in as arguments.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use vmetal_api::mac::MacAddress;

use super::message::{is_advertisement, parse_solicitation};

/// After another router's advertisement, stay quiet this long (routers advertise at least
/// every 600 s by default, RFC 4861 MaxRtrAdvInterval).
pub const ROUTER_QUIET: Duration = Duration::from_secs(30 * 60);

/// What to do with one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the empty advertisement to the sender.
    Answer,
    /// A solicitation not answered, with the metrics label saying why.
    Decline(&'static str),
    /// Another router advertised; `first` when it had not been heard lately (worth a log line).
    RouterHeard {
        /// Not heard within [`ROUTER_QUIET`] before.
        first: bool,
    },
    /// Other ICMPv6 traffic, a malformed solicitation or one from `::` (RFC 4861 §6.1.1).
    Ignore,
}

/// The responder's memory: when another router was last heard.
#[derive(Debug, Default)]
pub struct Responder {
    router_heard: Option<Instant>,
}

impl Responder {
    /// Decide about `msg` (an ICMPv6 message) from `from`, at `now`.
    pub fn handle(
        &mut self,
        msg: &[u8],
        from: &Ipv6Addr,
        is_known: impl Fn(&MacAddress) -> bool,
        now: Instant,
    ) -> Action {
        let quiet = self
            .router_heard
            .is_some_and(|t| now.saturating_duration_since(t) < ROUTER_QUIET);
        if is_advertisement(msg) {
            self.router_heard = Some(now);
            return Action::RouterHeard { first: !quiet };
        }
        let Ok(rs) = parse_solicitation(msg) else {
            return Action::Ignore;
        };
        if from.is_unspecified() {
            return Action::Ignore;
        }
        if !rs.source_mac.is_some_and(|mac| is_known(&mac)) {
            return Action::Decline("unknown_host");
        }
        if quiet {
            return Action::Decline("router_present");
        }
        Action::Answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ndp::message::empty_advertisement;

    const HOST: [u8; 6] = [0x52, 0x54, 0, 0x10, 0, 1];
    const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe10, 1);

    fn rs_from(mac: [u8; 6]) -> Vec<u8> {
        let mut m = vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        m.extend_from_slice(&mac);
        m
    }

    fn known(mac: &MacAddress) -> bool {
        mac.octets() == HOST
    }

    #[test]
    fn known_hosts_are_answered_and_others_declined() {
        let mut r = Responder::default();
        let now = Instant::now();
        assert_eq!(
            r.handle(&rs_from(HOST), &LINK_LOCAL, known, now),
            Action::Answer
        );
        assert_eq!(
            r.handle(&rs_from([2, 0, 0, 0, 0, 9]), &LINK_LOCAL, known, now),
            Action::Decline("unknown_host")
        );
        // No source link-layer address: nobody to look up.
        assert_eq!(
            r.handle(&rs_from(HOST)[..8], &LINK_LOCAL, known, now),
            Action::Decline("unknown_host")
        );
        // From `::`, and things that are not solicitations, get nothing.
        assert_eq!(
            r.handle(&rs_from(HOST), &Ipv6Addr::UNSPECIFIED, known, now),
            Action::Ignore
        );
        assert_eq!(
            r.handle(&[135, 0, 0, 0], &LINK_LOCAL, known, now),
            Action::Ignore
        );
        assert_eq!(
            r.handle(&[133, 0, 1], &LINK_LOCAL, known, now),
            Action::Ignore
        );
    }

    #[test]
    fn a_real_router_silences_us_for_a_while() {
        let mut r = Responder::default();
        let t0 = Instant::now();
        let router = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let ra = empty_advertisement();
        assert_eq!(
            r.handle(&ra, &router, known, t0),
            Action::RouterHeard { first: true }
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            r.handle(&ra, &router, known, later),
            Action::RouterHeard { first: false }
        );
        assert_eq!(
            r.handle(&rs_from(HOST), &LINK_LOCAL, known, later),
            Action::Decline("router_present")
        );
        let gone = later + ROUTER_QUIET;
        assert_eq!(
            r.handle(&rs_from(HOST), &LINK_LOCAL, known, gone),
            Action::Answer
        );
    }
}

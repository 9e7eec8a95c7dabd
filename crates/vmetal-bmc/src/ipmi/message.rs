//! IPMI LAN messages inside a payload: responder and requester addresses, NetFn/LUN, sequence
//! number, command, completion code and the two two's-complement checksums.

use super::DecodeError;
use super::wire::Reader;

/// Slave address of the BMC.
pub const BMC_ADDRESS: u8 = 0x20;
/// Software ID of a remote console, as ipmitool uses it.
pub const REMOTE_CONSOLE_ADDRESS: u8 = 0x81;

/// A request to the BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Responder slave address (the BMC, 0x20).
    pub rs_addr: u8,
    /// Network function (even: a request).
    pub netfn: u8,
    /// Responder LUN.
    pub rs_lun: u8,
    /// Requester address (software ID 0x81).
    pub rq_addr: u8,
    /// Requester sequence number (6 bits), echoed in the response.
    pub rq_seq: u8,
    /// Requester LUN.
    pub rq_lun: u8,
    /// Command.
    pub cmd: u8,
    /// Request data.
    pub data: Vec<u8>,
}

/// A response from the BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Requester address, copied from the request.
    pub rq_addr: u8,
    /// Network function (odd: the request's plus one).
    pub netfn: u8,
    /// Requester LUN.
    pub rq_lun: u8,
    /// Responder address.
    pub rs_addr: u8,
    /// The request's sequence number.
    pub rq_seq: u8,
    /// Responder LUN.
    pub rs_lun: u8,
    /// Command.
    pub cmd: u8,
    /// Completion code (0 = success).
    pub completion_code: u8,
    /// Response data after the completion code.
    pub data: Vec<u8>,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Encode the common layout: `a, b, chk1, c, d, body..., chk2`.
fn frame(a: u8, b: u8, c: u8, d: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&[a, b, checksum(&[a, b]), c, d]);
    out.extend_from_slice(body);
    let chk2 = checksum(&out[3..]);
    out.push(chk2);
    out
}

/// Split and verify the common layout, returning `(a, b, c, d, body)`.
fn unframe<'a>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<(u8, u8, u8, u8, &'a [u8]), DecodeError> {
    let mut r = Reader::new(what, bytes);
    let [a, b, chk1, c, d] = r.array()?;
    if checksum(&[a, b]) != chk1 {
        return Err(DecodeError::Checksum {
            what: "IPMI header",
        });
    }
    let rest = r.rest();
    let Some((&chk2, body)) = rest.split_last() else {
        return Err(DecodeError::Truncated {
            what,
            offset: 5,
            needed: 1,
        });
    };
    if checksum(&bytes[3..5 + body.len()]) != chk2 {
        return Err(DecodeError::Checksum { what: "IPMI data" });
    }
    Ok((a, b, c, d, body))
}

impl Request {
    /// A request from a remote console to the BMC, LUN 0.
    pub fn new(netfn: u8, cmd: u8, rq_seq: u8, data: Vec<u8>) -> Self {
        Self {
            rs_addr: BMC_ADDRESS,
            netfn,
            rs_lun: 0,
            rq_addr: REMOTE_CONSOLE_ADDRESS,
            rq_seq: rq_seq & 0x3F,
            rq_lun: 0,
            cmd,
            data,
        }
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(1 + self.data.len());
        body.push(self.cmd);
        body.extend_from_slice(&self.data);
        frame(
            self.rs_addr,
            (self.netfn << 2) | (self.rs_lun & 3),
            self.rq_addr,
            (self.rq_seq << 2) | (self.rq_lun & 3),
            &body,
        )
    }

    /// Decode and verify both checksums.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (rs_addr, netfn_lun, rq_addr, seq_lun, body) = unframe("IPMI request", bytes)?;
        let mut r = Reader::new("IPMI request", body);
        let cmd = r.u8()?;
        let netfn = netfn_lun >> 2;
        if netfn & 1 != 0 {
            return Err(DecodeError::Unexpected {
                what: "request NetFn (odd: a response)",
                value: netfn.into(),
            });
        }
        Ok(Self {
            rs_addr,
            netfn,
            rs_lun: netfn_lun & 3,
            rq_addr,
            rq_seq: seq_lun >> 2,
            rq_lun: seq_lun & 3,
            cmd,
            data: r.rest().to_vec(),
        })
    }

    /// The response to this request.
    pub fn response(&self, completion_code: u8, data: Vec<u8>) -> Response {
        Response {
            rq_addr: self.rq_addr,
            netfn: self.netfn | 1,
            rq_lun: self.rq_lun,
            rs_addr: self.rs_addr,
            rq_seq: self.rq_seq,
            rs_lun: self.rs_lun,
            cmd: self.cmd,
            completion_code,
            data,
        }
    }

    /// Whether `response` answers this request (same sequence, command and NetFn + 1).
    pub fn is_answered_by(&self, response: &Response) -> bool {
        response.rq_seq == self.rq_seq
            && response.cmd == self.cmd
            && response.netfn == self.netfn | 1
    }
}

impl Response {
    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(2 + self.data.len());
        body.push(self.cmd);
        body.push(self.completion_code);
        body.extend_from_slice(&self.data);
        frame(
            self.rq_addr,
            (self.netfn << 2) | (self.rq_lun & 3),
            self.rs_addr,
            (self.rq_seq << 2) | (self.rs_lun & 3),
            &body,
        )
    }

    /// Decode and verify both checksums.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (rq_addr, netfn_lun, rs_addr, seq_lun, body) = unframe("IPMI response", bytes)?;
        let mut r = Reader::new("IPMI response", body);
        let cmd = r.u8()?;
        let completion_code = r.u8()?;
        Ok(Self {
            rq_addr,
            netfn: netfn_lun >> 2,
            rq_lun: netfn_lun & 3,
            rs_addr,
            rq_seq: seq_lun >> 2,
            rs_lun: seq_lun & 3,
            cmd,
            completion_code,
            data: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn get_channel_auth_capabilities_request_matches_the_spec_example() {
        // rsSA 20, NetFn App (06) << 2 = 18, checksum c8, rqSA 81, seq 0, cmd 38,
        // data 8e 04 (channel E with v2 bit, administrator), checksum b5.
        let req = Request::new(0x06, 0x38, 0, vec![0x8e, 0x04]);
        assert_eq!(
            req.encode(),
            vec![0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5]
        );
        assert_eq!(Request::parse(&req.encode()), Ok(req));
    }

    #[test]
    fn response_round_trips_and_matches_its_request() {
        let req = Request::new(0x00, 0x01, 17, vec![]);
        let resp = req.response(0, vec![0x21, 0, 0]);
        let parsed = Response::parse(&resp.encode());
        assert_eq!(parsed.as_ref(), Ok(&resp));
        assert!(req.is_answered_by(&resp));
        assert_eq!(resp.netfn, 0x01);
    }

    #[test]
    fn checksum_errors_are_detected() {
        let mut bytes = Request::new(0x06, 0x01, 1, vec![]).encode();
        bytes[2] ^= 1;
        assert!(matches!(
            Request::parse(&bytes),
            Err(DecodeError::Checksum { .. })
        ));
        let mut bytes = Request::new(0x06, 0x01, 1, vec![9]).encode();
        bytes[6] ^= 1;
        assert!(matches!(
            Request::parse(&bytes),
            Err(DecodeError::Checksum { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Request::parse(&bytes);
            let _ = Response::parse(&bytes);
        }

        #[test]
        fn requests_round_trip(netfn in 0u8..32, cmd: u8, seq in 0u8..64, data in proptest::collection::vec(any::<u8>(), 0..30)) {
            let req = Request::new(netfn * 2, cmd, seq, data);
            prop_assert_eq!(Request::parse(&req.encode()), Ok(req));
        }
    }
}

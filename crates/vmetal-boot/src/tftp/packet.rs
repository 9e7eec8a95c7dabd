//! TFTP packets (RFC 1350) and option negotiation (RFC 2347 OACK, 2348 blksize, 2349
//! timeout and tsize), plus the path check that keeps every read inside the root.

use std::path::{Component, Path, PathBuf};

/// Default block size (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;

/// TFTP error codes used here.
pub mod error_code {
    /// Not defined, see message.
    pub const UNDEFINED: u16 = 0;
    /// File not found.
    pub const NOT_FOUND: u16 = 1;
    /// Access violation.
    pub const ACCESS: u16 = 2;
    /// Illegal TFTP operation.
    pub const ILLEGAL: u16 = 4;
    /// Option negotiation refused (RFC 2347).
    pub const OPTIONS: u16 = 8;
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Read request: file, mode and options in the order sent.
    Rrq {
        /// The requested file name.
        filename: String,
        /// `octet` or `netascii`.
        mode: String,
        /// Option names (lower-cased) and values.
        options: Vec<(String, String)>,
    },
    /// Write request (always refused).
    Wrq,
    /// A data block.
    Data {
        /// Block number.
        block: u16,
    },
    /// An acknowledgement.
    Ack {
        /// Block number.
        block: u16,
    },
    /// An error from the peer.
    Error {
        /// Error code.
        code: u16,
        /// Message.
        message: String,
    },
    /// Option acknowledgement.
    Oack,
}

/// Parses a datagram; `Err` names what is wrong.
pub fn parse(bytes: &[u8]) -> Result<Packet, &'static str> {
    let (op, body) = match bytes {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Err("shorter than an opcode"),
    };
    let block = || match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err("no block number"),
    };
    match op {
        1 => {
            let mut fields = body.split(|&b| b == 0);
            let mut text = |what| -> Result<String, &'static str> {
                let f = fields.next().ok_or(what)?;
                String::from_utf8(f.to_vec()).map_err(|_| "field is not UTF-8")
            };
            let filename = text("no file name")?;
            let mode = text("no mode")?.to_ascii_lowercase();
            if filename.is_empty() {
                return Err("empty file name");
            }
            if body.last() != Some(&0) {
                return Err("request is not NUL-terminated");
            }
            let mut options = Vec::new();
            let rest: Vec<&[u8]> = fields.collect();
            // The split leaves one empty piece after the final NUL.
            let rest = rest.split_last().map(|(_, r)| r).unwrap_or(&[]);
            for pair in rest.chunks(2) {
                if let [name, value] = pair {
                    let name =
                        String::from_utf8(name.to_vec()).map_err(|_| "option is not UTF-8")?;
                    let value =
                        String::from_utf8(value.to_vec()).map_err(|_| "option is not UTF-8")?;
                    options.push((name.to_ascii_lowercase(), value));
                } else {
                    return Err("option without a value");
                }
            }
            Ok(Packet::Rrq {
                filename,
                mode,
                options,
            })
        }
        2 => Ok(Packet::Wrq),
        3 => Ok(Packet::Data { block: block()? }),
        4 => Ok(Packet::Ack { block: block()? }),
        5 => {
            let code = block()?;
            let msg = body.get(2..).unwrap_or(&[]);
            let msg = msg.split(|&b| b == 0).next().unwrap_or(&[]);
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        6 => Ok(Packet::Oack),
        _ => Err("unknown opcode"),
    }
}

/// A DATA packet.
pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&3u16.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An ERROR packet.
pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&5u16.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

/// An OACK packet with the accepted options.
pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = 6u16.to_be_bytes().to_vec();
    for (k, v) in options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Negotiated transfer parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size.
    pub blksize: u16,
    /// Retransmission timeout in seconds.
    pub timeout_secs: u8,
}

/// Accepts the options we support (blksize, timeout, tsize), ignores the rest (RFC 2347),
/// and returns the parameters plus the options to put in the OACK (empty: no OACK).
pub fn negotiate(
    options: &[(String, String)],
    file_size: u64,
    default_timeout: u8,
) -> (Negotiated, Vec<(String, String)>) {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        timeout_secs: default_timeout,
    };
    let mut acked = Vec::new();
    for (name, value) in options {
        match name.as_str() {
            "blksize" => {
                if let Ok(v) = value.parse::<u32>()
                    && v >= 8
                {
                    let v = u16::try_from(v.min(u32::from(MAX_BLKSIZE))).unwrap_or(MAX_BLKSIZE);
                    n.blksize = v;
                    acked.push((name.clone(), v.to_string()));
                }
            }
            "timeout" => {
                if let Ok(v) = value.parse::<u8>()
                    && v >= 1
                {
                    n.timeout_secs = v;
                    acked.push((name.clone(), v.to_string()));
                }
            }
            "tsize" => acked.push((name.clone(), file_size.to_string())),
            _ => {}
        }
    }
    (n, acked)
}

/// Why a file name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefused {
    /// Absolute, `..`, NUL or otherwise able to leave the root.
    Denied,
}

/// The path under `root` a request names, checked lexically: relative, no `..`, no NUL.
/// The caller still canonicalises the result and checks it stays under the root (symlinks).
pub fn resolve(root: &Path, filename: &str) -> Result<PathBuf, PathRefused> {
    if filename.contains('\0') || filename.contains('\\') {
        return Err(PathRefused::Denied);
    }
    let path = Path::new(filename);
    let mut out = root.to_path_buf();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(PathRefused::Denied);
            }
        }
    }
    if out == root {
        return Err(PathRefused::Denied);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rrq_with_options() {
        let p =
            parse(b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00").unwrap();
        let Packet::Rrq {
            filename,
            mode,
            options,
        } = p
        else {
            panic!()
        };
        assert_eq!(filename, "undionly.kpxe");
        assert_eq!(mode, "octet");
        let (n, acked) = negotiate(&options, 1234, 2);
        assert_eq!(n.blksize, 1432);
        assert_eq!(
            oack(&acked),
            b"\x00\x06blksize\x001432\x00tsize\x001234\x00".to_vec()
        );
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        let root = Path::new("/srv/tftp");
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "..",
            "",
            ".",
            "a\\..\\b",
        ] {
            assert_eq!(resolve(root, bad), Err(PathRefused::Denied), "{bad}");
        }
        assert_eq!(
            resolve(root, "./x/ipxe.efi").unwrap(),
            Path::new("/srv/tftp/x/ipxe.efi")
        );
    }

    #[test]
    fn bad_packets_are_errors() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x00\x01file",
            b"\x00\x01file\x00octet",
            b"\x00\x04\x01",
            b"\x00\x09xx",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

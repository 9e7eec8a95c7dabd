//! MAC addresses in the one spelling vmetal stores and compares: lower-case, colon-separated.
//! Accepts the colon, dash, Cisco-dotted and bare-hex forms users paste from BMCs and switches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A MAC address that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddressError {
    /// The input is not one of the accepted MAC address spellings.
    #[error(
        "invalid MAC address {input:?}: write six hex octets as 52:54:00:12:34:56, \
         52-54-00-12-34-56, 5254.0012.3456 or 525400123456"
    )]
    Invalid {
        /// The text that was rejected, as given.
        input: String,
    },
}

/// A 48-bit MAC address; displays as lower-case colon-separated hex (`52:54:00:12:34:56`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// Parses any accepted spelling (`aa:bb:..`, `AA-BB-..`, `aabb.ccdd.eeff`, `aabbccddeeff`),
    /// ignoring surrounding whitespace.
    pub fn parse(s: &str) -> Result<Self, MacAddressError> {
        let invalid = || MacAddressError::Invalid {
            input: s.to_owned(),
        };
        let trimmed = s.trim();
        let bytes = trimmed.as_bytes();
        // Every accepted form is ASCII, so byte lengths decide the form.
        let groups: Vec<&str> = match bytes.len() {
            17 => {
                let sep = bytes[2];
                if sep != b':' && sep != b'-' {
                    return Err(invalid());
                }
                trimmed.split(char::from(sep)).collect()
            }
            14 => trimmed.split('.').collect(),
            12 => vec![trimmed],
            _ => return Err(invalid()),
        };
        let group_len = 12 / groups.len();
        if groups.len() * group_len != 12 || groups.iter().any(|g| g.len() != group_len) {
            return Err(invalid());
        }
        let hex: String = groups.concat();
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(invalid)?;
            // from_str_radix accepts a leading '+', so check the digits ourselves.
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(Self(octets))
    }

    /// The six octets, most significant first.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Builds an address from six octets, most significant first.
    pub fn from_octets(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = MacAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for MacAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Rewrites any accepted MAC spelling into the canonical `52:54:00:12:34:56` form.
pub fn normalize_mac(s: &str) -> Result<String, MacAddressError> {
    MacAddress::parse(s).map(|mac| mac.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CANON: &str = "52:54:00:ab:cd:ef";

    #[test]
    fn accepts_every_documented_spelling() {
        for input in [
            "52:54:00:ab:cd:ef",
            "52:54:00:AB:CD:EF",
            "52-54-00-AB-CD-EF",
            "52-54-00-ab-cd-ef",
            "5254.00ab.cdef",
            "5254.00AB.CDEF",
            "525400abcdef",
            "525400ABCDEF",
            "  52:54:00:ab:cd:ef\n",
            "\t5254.00ab.cdef ",
        ] {
            assert_eq!(normalize_mac(input).unwrap(), CANON, "input {input:?}");
        }
    }

    #[test]
    fn rejects_malformed_input_and_names_it() {
        for input in [
            "",
            "   ",
            "52:54:00:ab:cd",       // 5 octets
            "52:54:00:ab:cd:ef:01", // 7 octets
            "52:54:00:ab:cd:eg",    // bad hex
            "52:54-00:ab:cd:ef",    // mixed separators
            "52-54-00:ab-cd-ef",    // mixed separators
            "52.54.00.ab.cd.ef",    // dots between octets
            "5254:00ab:cdef",       // colons in Cisco grouping
            "525400abcde",          // 11 digits
            "525400abcdef0",        // 13 digits
            "5:54:00:ab:cd:ef0",    // misplaced separator
            "+2:54:00:ab:cd:ef",    // sign accepted by from_str_radix
            "52:54:00:ab:cd:éf",    // non-ASCII
            "52 54 00 ab cd ef",    // spaces
            "0x5254.00ab.cdef",     // prefix
        ] {
            let err = MacAddress::parse(input).unwrap_err();
            assert_eq!(
                err,
                MacAddressError::Invalid {
                    input: input.to_owned()
                }
            );
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn octets_round_trip() {
        let mac = MacAddress::from_octets([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(mac.octets(), [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(mac.to_string(), CANON);
        assert_eq!("5254.00AB.CDEF".parse::<MacAddress>().unwrap(), mac);
    }

    #[test]
    fn serde_writes_canonical_and_reads_any_spelling() {
        let mac: MacAddress = serde_json::from_str("\"52-54-00-AB-CD-EF\"").unwrap();
        assert_eq!(serde_json::to_string(&mac).unwrap(), format!("\"{CANON}\""));
        let err = serde_json::from_str::<MacAddress>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(octets in any::<[u8; 6]>()) {
            let mac = MacAddress::from_octets(octets);
            prop_assert_eq!(MacAddress::parse(&mac.to_string()), Ok(mac));
            prop_assert_eq!(MacAddress::parse(&mac.to_string().to_uppercase().replace(':', "-")), Ok(mac));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = MacAddress::parse(&s);
        }
    }
}

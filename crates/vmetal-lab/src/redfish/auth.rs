//! Who may talk to the virtual BMC: HTTP basic credentials or an `X-Auth-Token` from the
//! session store, checked against the one configured account.

use std::collections::HashMap;
use std::sync::Mutex;

use subtle_free::constant_time_eq;

/// The live sessions of one service: token → (session id, user).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    inner: Mutex<SessionTable>,
}

#[derive(Debug, Default)]
struct SessionTable {
    by_token: HashMap<String, (String, String)>,
    next_id: u64,
}

impl Sessions {
    /// Open a session for `user`; returns (session id, token).
    pub fn open(&self, user: &str) -> (String, String) {
        let mut table = self.lock();
        table.next_id += 1;
        let id = table.next_id.to_string();
        let token = new_token();
        table
            .by_token
            .insert(token.clone(), (id.clone(), user.to_string()));
        (id, token)
    }

    /// The session id a token belongs to.
    pub fn lookup(&self, token: &str) -> Option<String> {
        self.lock().by_token.get(token).map(|(id, _)| id.clone())
    }

    /// The user of session `id`, if it is open.
    pub fn user_of(&self, id: &str) -> Option<String> {
        self.lock()
            .by_token
            .values()
            .find(|(sid, _)| sid == id)
            .map(|(_, user)| user.clone())
    }

    /// Ids of the open sessions, in opening order.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<u64> = self
            .lock()
            .by_token
            .values()
            .filter_map(|(id, _)| id.parse().ok())
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|i| i.to_string()).collect()
    }

    /// Close session `id`; false when there was none.
    pub fn close(&self, id: &str) -> bool {
        let mut table = self.lock();
        let before = table.by_token.len();
        table.by_token.retain(|_, (sid, _)| sid != id);
        table.by_token.len() != before
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness, still unique per process; this is a lab service.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `username`/`password` match the account.
pub(crate) fn credentials_match(
    username: &str,
    password: &str,
    expected_user: &str,
    expected_password: &str,
) -> bool {
    // Evaluate both so the timing does not tell which one was wrong.
    let user_ok = constant_time_eq(username.as_bytes(), expected_user.as_bytes());
    let password_ok = constant_time_eq(password.as_bytes(), expected_password.as_bytes());
    user_ok & password_ok
}

/// (user, password) from an `Authorization: Basic ...` header value.
pub(crate) fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Standard base64 with padding; `None` on any invalid input.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - padding] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * padding as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

/// Byte-slice equality that does not stop at the first difference.
mod subtle_free {
    pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_decodes() {
        // "admin:p@ss:word" — the password may contain colons.
        assert_eq!(
            parse_basic("Basic YWRtaW46cEBzczp3b3Jk"),
            Some(("admin".into(), "p@ss:word".into()))
        );
        assert_eq!(parse_basic("basic YTpi"), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!!"), None);
        assert_eq!(parse_basic("Basic YQ=="), None); // no colon
        assert_eq!(base64_decode("YWI="), Some(b"ab".to_vec()));
        assert_eq!(base64_decode("YQ==YQ=="), None);
    }

    #[test]
    fn sessions_open_lookup_close() {
        let sessions = Sessions::default();
        let (id, token) = sessions.open("admin");
        assert_eq!(token.len(), 32);
        assert_eq!(sessions.lookup(&token), Some(id.clone()));
        assert_eq!(sessions.user_of(&id).as_deref(), Some("admin"));
        assert!(sessions.close(&id));
        assert!(!sessions.close(&id));
        assert_eq!(sessions.lookup(&token), None);
    }

    #[test]
    fn credentials_must_both_match() {
        assert!(credentials_match("admin", "pw", "admin", "pw"));
        assert!(!credentials_match("admin", "px", "admin", "pw"));
        assert!(!credentials_match("root", "pw", "admin", "pw"));
    }
}

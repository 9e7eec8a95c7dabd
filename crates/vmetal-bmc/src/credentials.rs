//! BMC credentials that cannot leak: the password is zeroed on drop and never printed.

use zeroize::Zeroizing;

/// A username and password for a BMC. `Debug` shows the username only.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: Zeroizing<String>,
}

impl Credentials {
    /// Credentials from a username and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password; only protocol code should call this.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::new("admin", "hunter2");
        let shown = format!("{c:?}");
        assert!(shown.contains("admin"));
        assert!(!shown.contains("hunter2"));
    }
}

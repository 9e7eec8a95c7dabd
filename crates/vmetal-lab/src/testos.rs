//! The test OS's cloud-init subset: read a ConfigDrive v2 (metadata and user data) and turn it
//! into a plan, a list of [`Step`]s that `vmetal-testos init` executes in order.
//!
//! Pure: bytes in, a plan out; nothing here touches the machine. Anything the subset does not
//! implement becomes a [`Step::Ignored`] or [`Step::Skipped`] line on the console, never an error.
//! Order follows cloud-init's modules: `bootcmd`, `write_files`, hostname, SSH keys, deferred
//! `write_files`, then `runcmd` (or a `#!` user-data script).

use std::path::PathBuf;

use base64::Engine;
use serde_yaml::Value;

/// Path of the metadata inside the drive.
pub const META_DATA_PATH: &str = "openstack/latest/meta_data.json";
/// Path of the user data inside the drive.
pub const USER_DATA_PATH: &str = "openstack/latest/user_data";
/// Filesystem label of a config drive.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// Where `ssh_authorized_keys` end up.
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
/// Mode of written files without `permissions` (cloud-init's default).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// The top-level cloud-config keys this subset implements.
pub const SUPPORTED_KEYS: [&str; 5] = [
    "hostname",
    "write_files",
    "runcmd",
    "bootcmd",
    "ssh_authorized_keys",
];

/// What `meta_data.json` says about the instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaData {
    /// `local-hostname`, else `hostname`, else `name`.
    pub hostname: Option<String>,
    /// `uuid`.
    pub uuid: Option<String>,
}

/// A config drive's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrive {
    /// Parsed `meta_data.json` (empty when missing or not JSON).
    pub meta: MetaData,
    /// Why `meta_data.json` could not be used, if it could not.
    pub meta_problem: Option<String>,
    /// `user_data`, if present.
    pub user_data: Option<Vec<u8>>,
}

/// The config drive in a FAT filesystem image (`vmetal_agent::read_config_drive`'s bytes):
/// `None` unless it is labelled `config-2` or holds `openstack/latest/meta_data.json`.
pub fn read_drive(fat: &[u8]) -> Option<ConfigDrive> {
    let meta_bytes = vmetal_agent::fat::read_file(fat, META_DATA_PATH);
    let labelled =
        vmetal_agent::fat::label(fat).is_some_and(|l| l.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL));
    if !labelled && meta_bytes.is_none() {
        return None;
    }
    let (meta, meta_problem) = match meta_bytes {
        None => (
            MetaData::default(),
            Some(format!("{META_DATA_PATH} is missing")),
        ),
        Some(bytes) => match parse_meta_data(&bytes) {
            Ok(meta) => (meta, None),
            Err(reason) => (MetaData::default(), Some(reason)),
        },
    };
    Some(ConfigDrive {
        meta,
        meta_problem,
        user_data: vmetal_agent::fat::read_file(fat, USER_DATA_PATH),
    })
}

/// Parse `meta_data.json`; the error says why it is unusable.
pub fn parse_meta_data(json: &[u8]) -> Result<MetaData, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("{META_DATA_PATH} is not JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!("{META_DATA_PATH} is not a JSON object"));
    }
    let text = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    Ok(MetaData {
        hostname: ["local-hostname", "hostname", "name"]
            .iter()
            .find_map(|k| text(k)),
        uuid: text("uuid"),
    })
}

/// Which list a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `bootcmd`: before files are written.
    Bootcmd,
    /// `runcmd`: last.
    Runcmd,
}

impl Stage {
    /// The cloud-config key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Bootcmd => "bootcmd",
            Self::Runcmd => "runcmd",
        }
    }
}

/// How to run one command.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// A string entry: `/bin/sh -c <line>`.
    Shell(String),
    /// A list entry: exec the argv directly.
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            Self::Argv(argv) => argv.clone(),
        }
    }
}

// Commands carry join tokens; debug output must not.
impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shell(line) => write!(f, "Shell(<{} bytes>)", line.len()),
            Self::Argv(argv) => write!(
                f,
                "Argv({:?}, <{} args>)",
                argv.first(),
                argv.len().saturating_sub(1)
            ),
        }
    }
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keys this subset does not implement.
    Ignored(Vec<String>),
    /// Something that is not done, and why (a malformed entry, an unsupported encoding).
    Skipped {
        /// What (`write_files[2]`, `user data`).
        what: String,
        /// Why.
        reason: String,
    },
    /// Run a `bootcmd` or `runcmd` entry.
    Run {
        /// Which list.
        stage: Stage,
        /// Index in that list.
        index: usize,
        /// The command.
        command: Command,
    },
    /// Write (or append to) a file, creating parent directories.
    WriteFile {
        /// Index in `write_files`.
        index: usize,
        /// Absolute path.
        path: PathBuf,
        /// Decoded contents.
        content: Vec<u8>,
        /// File mode.
        mode: u32,
        /// Append instead of replacing.
        append: bool,
    },
    /// Set the host name (kernel, `/etc/hostname`, `/etc/hosts`).
    Hostname(String),
    /// Write these keys to [`AUTHORIZED_KEYS`].
    AuthorizedKeys(Vec<String>),
    /// Run the user data itself (it starts with `#!`).
    Script(Vec<u8>),
}

impl Step {
    /// The console name of the step (`runcmd[2]`, `write_files[0]`); never its contents.
    pub fn label(&self) -> String {
        match self {
            Self::Ignored(_) => "ignored".into(),
            Self::Skipped { what, .. } => what.clone(),
            Self::Run { stage, index, .. } => format!("{}[{index}]", stage.key()),
            Self::WriteFile { index, .. } => format!("write_files[{index}]"),
            Self::Hostname(_) => "hostname".into(),
            Self::AuthorizedKeys(_) => "ssh_authorized_keys".into(),
            Self::Script(_) => "user-data script".into(),
        }
    }
}

/// The plan for a config drive's metadata and user data.
pub fn plan(meta: &MetaData, user_data: Option<&[u8]>) -> Vec<Step> {
    let mut steps = Vec::new();
    let meta_hostname = || meta.hostname.clone().map(Step::Hostname);
    let Some(data) = user_data.filter(|d| !d.iter().all(u8::is_ascii_whitespace)) else {
        steps.extend(meta_hostname());
        return steps;
    };
    if data.starts_with(b"#!") {
        steps.extend(meta_hostname());
        steps.push(Step::Script(data.to_vec()));
        return steps;
    }
    let first_line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    if !first_line.trim_ascii().starts_with(b"#cloud-config") {
        steps.extend(meta_hostname());
        steps.push(Step::Skipped {
            what: "user data".into(),
            reason: format!(
                "it starts with {:?}; the test OS understands #cloud-config and #! scripts only",
                String::from_utf8_lossy(&first_line[..first_line.len().min(40)])
            ),
        });
        return steps;
    }
    let doc = match serde_yaml::from_slice::<Value>(data) {
        Ok(Value::Mapping(m)) => m,
        Ok(Value::Null) => serde_yaml::Mapping::new(),
        Ok(_) => {
            steps.extend(meta_hostname());
            steps.push(skipped(
                "user data",
                "the #cloud-config document is not a mapping",
            ));
            return steps;
        }
        Err(e) => {
            steps.extend(meta_hostname());
            steps.push(skipped("user data", &format!("not valid YAML: {e}")));
            return steps;
        }
    };

    let ignored: Vec<String> = doc
        .keys()
        .map(|k| match k {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        })
        .filter(|k| !SUPPORTED_KEYS.contains(&k.as_str()))
        .collect();
    if !ignored.is_empty() {
        steps.push(Step::Ignored(ignored));
    }

    steps.extend(commands(Stage::Bootcmd, doc.get("bootcmd")));
    let (now, deferred) = write_files(doc.get("write_files"));
    steps.extend(now);
    match doc.get("hostname") {
        None | Some(Value::Null) => steps.extend(meta_hostname()),
        Some(v) => match scalar(v).filter(|h| !h.trim().is_empty()) {
            Some(h) => steps.push(Step::Hostname(h.trim().to_string())),
            None => {
                steps.push(skipped("hostname", "it is not a string"));
                steps.extend(meta_hostname());
            }
        },
    }
    match doc.get("ssh_authorized_keys") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(keys)) => {
            let keys: Vec<String> = keys.iter().filter_map(scalar).collect();
            if !keys.is_empty() {
                steps.push(Step::AuthorizedKeys(keys));
            }
        }
        Some(_) => steps.push(skipped("ssh_authorized_keys", "it is not a list")),
    }
    steps.extend(deferred);
    steps.extend(commands(Stage::Runcmd, doc.get("runcmd")));
    steps
}

fn skipped(what: &str, reason: &str) -> Step {
    Step::Skipped {
        what: what.into(),
        reason: reason.into(),
    }
}

/// A YAML scalar as cloud-init would stringify it.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn commands(stage: Stage, list: Option<&Value>) -> Vec<Step> {
    let key = stage.key();
    let entries = match list {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Sequence(s)) => s,
        Some(_) => return vec![skipped(key, "it is not a list")],
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let command = match entry {
                Value::String(line) => Some(Command::Shell(line.clone())),
                Value::Sequence(argv) => argv
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .filter(|a| !a.is_empty())
                    .map(Command::Argv),
                _ => None,
            };
            match command {
                Some(command) => Step::Run {
                    stage,
                    index,
                    command,
                },
                None => skipped(
                    &format!("{key}[{index}]"),
                    "an entry must be a string or a non-empty list of strings",
                ),
            }
        })
        .collect()
}

/// `write_files` entries: (written before the hostname, `defer: true` ones written before `runcmd`).
fn write_files(list: Option<&Value>) -> (Vec<Step>, Vec<Step>) {
    let (mut now, mut deferred) = (Vec::new(), Vec::new());
    let entries = match list {
        None | Some(Value::Null) => return (now, deferred),
        Some(Value::Sequence(s)) => s,
        Some(_) => return (vec![skipped("write_files", "it is not a list")], deferred),
    };
    for (index, entry) in entries.iter().enumerate() {
        let defer = entry.get("defer").and_then(Value::as_bool) == Some(true);
        let step = write_file(index, entry).unwrap_or_else(|reason| Step::Skipped {
            what: format!("write_files[{index}]"),
            reason,
        });
        if defer {
            deferred.push(step);
        } else {
            now.push(step);
        }
    }
    (now, deferred)
}

fn write_file(index: usize, entry: &Value) -> Result<Step, String> {
    if !entry.is_mapping() {
        return Err("an entry must be a mapping with path and content".into());
    }
    let path = entry
        .get("path")
        .and_then(scalar)
        .filter(|p| p.starts_with('/'))
        .ok_or("path is missing or not absolute")?;
    let text = match entry.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(v) => scalar(v).ok_or("content is not a string")?,
    };
    let encoding = entry
        .get("encoding")
        .and_then(scalar)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let content = match encoding.as_str() {
        "" | "text/plain" => text.into_bytes(),
        "b64" | "base64" => {
            // YAML folds long base64 over lines; the decoder wants it in one piece.
            let compact: String = text.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| format!("content is not valid base64: {e}"))?
        }
        other => {
            return Err(format!(
                "encoding {other:?} is not supported (text/plain, b64, base64 are)"
            ));
        }
    };
    let mode = match entry.get("permissions") {
        None | Some(Value::Null) => DEFAULT_FILE_MODE,
        Some(v) => parse_mode(v).ok_or_else(|| {
            format!(
                "permissions {:?} is not an octal mode such as '0644'",
                scalar(v).unwrap_or_default()
            )
        })?,
    };
    Ok(Step::WriteFile {
        index,
        path: PathBuf::from(path),
        content,
        mode,
        append: entry.get("append").and_then(Value::as_bool) == Some(true),
    })
}

/// An octal mode: `'0644'`, `'644'`, `'0o644'`; an unquoted YAML number's digits are read as
/// octal too (`permissions: 0644` parses as the number 644 in YAML 1.2).
fn parse_mode(v: &Value) -> Option<u32> {
    let text = scalar(v)?;
    let digits = text.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o7777).then_some(mode)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(h: &str) -> MetaData {
        MetaData {
            hostname: Some(h.into()),
            uuid: None,
        }
    }

    fn labels(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::label).collect()
    }

    #[test]
    fn meta_data_hostname_prefers_local_hostname() {
        let m = parse_meta_data(
            br#"{"uuid":"u-1","name":"n","hostname":"h","local-hostname":"server-3"}"#,
        )
        .unwrap();
        assert_eq!(m.hostname.as_deref(), Some("server-3"));
        assert_eq!(m.uuid.as_deref(), Some("u-1"));
        let m = parse_meta_data(br#"{"name":"only-name","hostname":""}"#).unwrap();
        assert_eq!(m.hostname.as_deref(), Some("only-name"));
        assert!(
            parse_meta_data(b"[1]")
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(parse_meta_data(b"{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn full_cloud_config_runs_in_cloud_init_order() {
        let ud = b"#cloud-config
hostname: from-user-data
packages: [htop]
users: [default]
runcmd:
  - echo first
  - [touch, /tmp/x]
write_files:
  - path: /etc/motd
    content: hello
    permissions: '0600'
    owner: root:root
  - path: /etc/late
    content: late
    defer: true
  - path: /etc/b64
    encoding: b64
    content: aGVs
      bG8=
    append: true
bootcmd:
  - echo boot
ssh_authorized_keys:
  - ssh-ed25519 AAAA a@b
";
        let steps = plan(&meta("from-meta"), Some(ud));
        assert_eq!(
            labels(&steps),
            [
                "ignored",
                "bootcmd[0]",
                "write_files[0]",
                "write_files[2]",
                "hostname",
                "ssh_authorized_keys",
                "write_files[1]",
                "runcmd[0]",
                "runcmd[1]",
            ]
        );
        assert_eq!(
            steps[0],
            Step::Ignored(vec!["packages".into(), "users".into()])
        );
        assert_eq!(
            steps[2],
            Step::WriteFile {
                index: 0,
                path: "/etc/motd".into(),
                content: b"hello".to_vec(),
                mode: 0o600,
                append: false,
            }
        );
        let Step::WriteFile {
            content,
            append,
            mode,
            ..
        } = &steps[3]
        else {
            panic!("{:?}", steps[3])
        };
        assert_eq!(
            (content.as_slice(), *append, *mode),
            (&b"hello"[..], true, 0o644)
        );
        assert_eq!(steps[4], Step::Hostname("from-user-data".into()));
        assert_eq!(
            steps[5],
            Step::AuthorizedKeys(vec!["ssh-ed25519 AAAA a@b".into()])
        );
        let Step::Run { command, .. } = &steps[7] else {
            panic!()
        };
        assert_eq!(command.argv(), ["/bin/sh", "-c", "echo first"]);
        let Step::Run { command, .. } = &steps[8] else {
            panic!()
        };
        assert_eq!(command.argv(), ["touch", "/tmp/x"]);
    }

    #[test]
    fn meta_data_hostname_when_user_data_has_none() {
        let steps = plan(&meta("server-3"), Some(b"#cloud-config\nruncmd: [date]\n"));
        assert_eq!(steps[0], Step::Hostname("server-3".into()));
        assert_eq!(labels(&steps), ["hostname", "runcmd[0]"]);
        assert_eq!(plan(&meta("a"), None), [Step::Hostname("a".into())]);
        assert_eq!(plan(&MetaData::default(), Some(b"\n\n")), []);
    }

    #[test]
    fn script_user_data_runs_as_a_script() {
        let steps = plan(&meta("h"), Some(b"#!/bin/sh\necho hi\n"));
        assert_eq!(
            steps,
            [
                Step::Hostname("h".into()),
                Step::Script(b"#!/bin/sh\necho hi\n".to_vec())
            ]
        );
    }

    #[test]
    fn bad_input_is_skipped_never_fatal() {
        let steps = plan(&meta("h"), Some(b"#cloud-config\nruncmd: [unclosed\n"));
        assert_eq!(labels(&steps), ["hostname", "user data"]);
        let steps = plan(&meta("h"), Some(b"Content-Type: multipart/mixed\n"));
        assert!(
            matches!(&steps[1], Step::Skipped { reason, .. } if reason.contains("#cloud-config"))
        );
        let ud = b"#cloud-config
write_files:
  - path: relative/path
  - path: /gz
    encoding: gzip
    content: x
  - path: /bad-mode
    permissions: rwx
  - just a string
  - path: /bad-b64
    encoding: base64
    content: '!!!'
runcmd:
  - {not: a command}
  - []
  - echo ok
runcmd_typo: 1
";
        let steps = plan(&MetaData::default(), Some(ud));
        let reasons: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Skipped { what, reason } => Some(format!("{what}: {reason}")),
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), 7, "{reasons:#?}");
        assert!(reasons[0].starts_with("write_files[0]: path"));
        assert!(reasons[1].contains("\"gzip\" is not supported"));
        assert!(reasons[2].contains("octal"));
        assert!(reasons[4].contains("base64"));
        assert!(reasons[5].starts_with("runcmd[0]"));
        assert_eq!(steps[0], Step::Ignored(vec!["runcmd_typo".into()]));
        assert!(matches!(steps.last(), Some(Step::Run { index: 2, .. })));
    }

    #[test]
    fn modes_are_octal_even_unquoted() {
        for (yaml, mode) in [
            ("'0644'", 0o644),
            ("'755'", 0o755),
            ("0600", 0o600),
            ("'0o700'", 0o700),
        ] {
            let v: Value = serde_yaml::from_str(yaml).unwrap();
            assert_eq!(parse_mode(&v), Some(mode), "{yaml}");
        }
        for bad in ["'0888'", "'rw'", "'77777'"] {
            let v: Value = serde_yaml::from_str(bad).unwrap();
            assert_eq!(parse_mode(&v), None, "{bad}");
        }
    }

    #[test]
    fn commands_do_not_leak_into_debug_or_labels() {
        let token = "abcdef.0123456789abcdef";
        let ud = format!(
            "#cloud-config\nruncmd:\n  - kubeadm join 10.0.2.2:6443 --token {token}\n  - [kubeadm, join, --token, {token}]\n"
        );
        let steps = plan(&MetaData::default(), Some(ud.as_bytes()));
        let text = format!("{steps:?} {:?}", labels(&steps));
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }

    #[test]
    fn reads_a_drive_built_like_the_provisioner_does() {
        let fat = vmetal_agent::fat::build(
            "config-2",
            &[
                (
                    META_DATA_PATH,
                    br#"{"local-hostname":"server-9","uuid":"u"}"#,
                ),
                (USER_DATA_PATH, b"#cloud-config\nruncmd: [date]\n"),
            ],
        )
        .unwrap();
        let drive = read_drive(&fat).unwrap();
        assert_eq!(drive.meta.hostname.as_deref(), Some("server-9"));
        assert_eq!(drive.meta_problem, None);
        assert_eq!(
            drive.user_data.as_deref(),
            Some(&b"#cloud-config\nruncmd: [date]\n"[..])
        );
        let other = vmetal_agent::fat::build("TESTOS", &[("syslinux.cfg", b"x")]).unwrap();
        assert_eq!(read_drive(&other), None);
        assert_eq!(read_drive(b"not a filesystem"), None);
    }
}

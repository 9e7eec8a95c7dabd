//! QMP, the QEMU Machine Protocol, as a sans-IO codec: JSON lines in, typed messages out,
//! commands rendered to bytes, and the capabilities handshake as a small state machine.
//!
//! The socket loop in `mod.rs` only moves bytes; everything here is tested with byte strings.
//! QEMU's reference: `docs/interop/qmp-spec.rst` (greeting, `qmp_capabilities`, `execute`,
//! `return`, `error`, asynchronous `event`s that may arrive between a command and its reply).

use serde_json::{Map, Value, json};

use super::QemuError;

/// Longest line accepted; QMP messages we use are tiny, so a longer one is garbage.
const MAX_LINE: usize = 1 << 20;
/// How much of a malformed line an error quotes.
const QUOTE: usize = 200;

/// The server's greeting, sent once on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version as (major, minor, micro).
    pub version: (u64, u64, u64),
    /// The distribution's package string (`Debian 1:7.2+dfsg-7`).
    pub package: String,
    /// Capabilities the server offers (`oob`); we enable none.
    pub capabilities: Vec<String>,
}

/// An asynchronous event (`SHUTDOWN`, `RESET`, `STOP`, `RESUME`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name.
    pub name: String,
    /// Its `data` member (`Null` when absent).
    pub data: Value,
    /// When QEMU emitted it, as (seconds, microseconds) since the epoch.
    pub timestamp: Option<(i64, i64)>,
}

impl Event {
    /// For a `SHUTDOWN` event, its reason (`guest-shutdown`, `guest-reset`, `host-qmp-quit`,
    /// `host-signal`, ...).
    pub fn shutdown_reason(&self) -> Option<&str> {
        (self.name == "SHUTDOWN")
            .then(|| self.data.get("reason").and_then(Value::as_str))
            .flatten()
    }
}

/// A command failure as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The error class (`GenericError`, `CommandNotFound`, ...).
    pub class: String,
    /// QEMU's human-readable description.
    pub desc: String,
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting.
    Greeting(Greeting),
    /// A command succeeded; `id` echoes the command's id.
    Return {
        /// The command's id, if it had a numeric one.
        id: Option<u64>,
        /// The `return` member.
        value: Value,
    },
    /// A command failed (or QEMU could not parse it).
    Error {
        /// The command's id, if it had a numeric one (a parse error has none).
        id: Option<u64>,
        /// What went wrong.
        failure: Failure,
    },
    /// An asynchronous event.
    Event(Event),
}

fn malformed(line: &[u8], reason: impl Into<String>) -> QemuError {
    let shown = String::from_utf8_lossy(&line[..line.len().min(QUOTE)]).into_owned();
    QemuError::QmpMalformed {
        line: shown,
        reason: reason.into(),
    }
}

/// Parse one line (without its line ending) into a message.
pub fn parse(line: &[u8]) -> Result<Message, QemuError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| malformed(line, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(malformed(line, "not a JSON object"));
    };
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(qmp) = obj.get("QMP") {
        return parse_greeting(qmp).ok_or_else(|| malformed(line, "greeting without a version"));
    }
    if let Some(value) = obj.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(error) = obj.get("error") {
        let text = |k: &str| error.get(k).and_then(Value::as_str).map(String::from);
        let (Some(class), Some(desc)) = (text("class"), text("desc")) else {
            return Err(malformed(line, "error without class and desc"));
        };
        return Ok(Message::Error {
            id,
            failure: Failure { class, desc },
        });
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        let timestamp = obj.get("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_i64()?,
                t.get("microseconds")?.as_i64()?,
            ))
        });
        return Ok(Message::Event(Event {
            name: name.to_string(),
            data: obj.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        }));
    }
    Err(malformed(
        line,
        "none of QMP, return, error or event is present",
    ))
}

fn parse_greeting(qmp: &Value) -> Option<Message> {
    let v = qmp.get("version")?;
    let q = v.get("qemu")?;
    let n = |k: &str| q.get(k).and_then(Value::as_u64);
    Some(Message::Greeting(Greeting {
        version: (n("major")?, n("minor")?, n("micro")?),
        package: v
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        capabilities: qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|caps| {
                caps.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

/// A command to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The command name (`quit`, `query-status`, `system_powerdown`, `cont`).
    pub execute: String,
    /// Its arguments object, if any.
    pub arguments: Option<Value>,
    /// The id QEMU echoes in the reply.
    pub id: Option<u64>,
}

impl Command {
    /// The command as one JSON line, ending in `\n`.
    pub fn render(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("execute".into(), Value::String(self.execute.clone()));
        if let Some(args) = &self.arguments {
            obj.insert("arguments".into(), args.clone());
        }
        if let Some(id) = self.id {
            obj.insert("id".into(), json!(id));
        }
        let mut line = Value::Object(obj).to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// Splits a byte stream into lines (QEMU ends them with `\r\n`), across partial reads.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Set while skipping the rest of an overlong line.
    discarding: bool,
}

impl LineBuffer {
    /// Append bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete, non-empty line without its ending; an overlong line is an error once
    /// and its rest is skipped.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, QemuError>> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE && !self.discarding {
                    self.discarding = true;
                    let err = malformed(&self.buf, format!("line longer than {MAX_LINE} bytes"));
                    self.buf.clear();
                    return Some(Err(err));
                }
                if self.discarding {
                    self.buf.clear();
                }
                return None;
            };
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(line));
        }
    }
}

/// Where the handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitingGreeting,
    Negotiating { id: u64 },
    Ready,
}

/// What the caller should do with a message the session has taken in.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write these bytes (the `qmp_capabilities` request answering the greeting).
    Send(Vec<u8>),
    /// Capabilities are negotiated: commands may be sent.
    Ready,
    /// The reply to a command.
    Reply {
        /// The command's id (`None` for a reply QEMU could not tie to a command).
        id: Option<u64>,
        /// Its result.
        result: Result<Value, Failure>,
    },
    /// An asynchronous event.
    Event(Event),
}

/// The client side of one QMP connection: the handshake, then numbered commands.
#[derive(Debug)]
pub struct Session {
    state: State,
    next_id: u64,
    greeting: Option<Greeting>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session waiting for the greeting.
    pub fn new() -> Self {
        Self {
            state: State::AwaitingGreeting,
            next_id: 1,
            greeting: None,
        }
    }

    /// Whether commands may be sent.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The server's greeting, once received.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Take in one message from the server.
    pub fn handle(&mut self, msg: Message) -> Result<Output, QemuError> {
        match (&self.state, msg) {
            (_, Message::Event(event)) => Ok(Output::Event(event)),
            (State::AwaitingGreeting, Message::Greeting(greeting)) => {
                self.greeting = Some(greeting);
                let id = self.take_id();
                self.state = State::Negotiating { id };
                Ok(Output::Send(
                    Command {
                        execute: "qmp_capabilities".into(),
                        arguments: None,
                        id: Some(id),
                    }
                    .render(),
                ))
            }
            (State::AwaitingGreeting, other) => Err(QemuError::QmpProtocol {
                reason: format!("expected the greeting, got {other:?}"),
            }),
            (_, Message::Greeting(_)) => Err(QemuError::QmpProtocol {
                reason: "a second greeting on one connection".into(),
            }),
            (State::Negotiating { id }, Message::Return { id: got, .. }) if got == Some(*id) => {
                self.state = State::Ready;
                Ok(Output::Ready)
            }
            (State::Negotiating { .. }, Message::Error { failure, .. }) => {
                Err(QemuError::QmpCommand {
                    command: "qmp_capabilities".into(),
                    class: failure.class,
                    desc: failure.desc,
                })
            }
            (State::Negotiating { .. }, other) => Err(QemuError::QmpProtocol {
                reason: format!("expected the qmp_capabilities reply, got {other:?}"),
            }),
            (State::Ready, Message::Return { id, value }) => Ok(Output::Reply {
                id,
                result: Ok(value),
            }),
            (State::Ready, Message::Error { id, failure }) => Ok(Output::Reply {
                id,
                result: Err(failure),
            }),
        }
    }

    /// Number and render a command; refused before the handshake is done.
    pub fn command(
        &mut self,
        execute: &str,
        arguments: Option<Value>,
    ) -> Result<(u64, Vec<u8>), QemuError> {
        if !self.is_ready() {
            return Err(QemuError::QmpProtocol {
                reason: format!("cannot send {execute} before capabilities are negotiated"),
            });
        }
        let id = self.take_id();
        let line = Command {
            execute: execute.into(),
            arguments,
            id: Some(id),
        }
        .render();
        Ok((id, line))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b2"}, "capabilities": ["oob"]}}"#;

    fn lines(buf: &mut LineBuffer) -> Vec<Result<Vec<u8>, QemuError>> {
        std::iter::from_fn(|| buf.next_line()).collect()
    }

    #[test]
    fn greeting_is_parsed() {
        let Message::Greeting(g) = parse(GREETING).unwrap() else {
            panic!("not a greeting");
        };
        assert_eq!(g.version, (7, 2, 22));
        assert_eq!(g.package, "Debian 1:7.2+dfsg-7+deb12u18+b2");
        assert_eq!(g.capabilities, vec!["oob"]);
    }

    #[test]
    fn returns_errors_and_events_are_parsed() {
        assert_eq!(
            parse(br#"{"return": {"status": "running", "running": true}, "id": 7}"#).unwrap(),
            Message::Return {
                id: Some(7),
                value: json!({"status": "running", "running": true})
            }
        );
        assert_eq!(
            parse(br#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": 3}"#).unwrap(),
            Message::Error {
                id: Some(3),
                failure: Failure {
                    class: "CommandNotFound".into(),
                    desc: "The command nope has not been found".into()
                }
            }
        );
        let Message::Event(e) = parse(br#"{"timestamp": {"seconds": 1795575462, "microseconds": 124108}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#).unwrap() else {
            panic!("not an event");
        };
        assert_eq!(e.name, "SHUTDOWN");
        assert_eq!(e.timestamp, Some((1_795_575_462, 124_108)));
        assert_eq!(e.shutdown_reason(), Some("guest-shutdown"));
        let Message::Event(resume) =
            parse(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#)
                .unwrap()
        else {
            panic!("not an event");
        };
        assert_eq!(resume.data, Value::Null);
        assert_eq!(resume.shutdown_reason(), None);
    }

    #[test]
    fn malformed_lines_are_errors_that_quote_the_line() {
        for (line, why) in [
            (&b"{\"return\": {}"[..], "not JSON"),
            (b"[1, 2]", "not a JSON object"),
            (b"{\"hello\": 1}", "none of QMP"),
            (b"{\"error\": {\"class\": 1}}", "error without class"),
            (
                b"{\"QMP\": {\"capabilities\": []}}",
                "greeting without a version",
            ),
            (b"\xff\xfe", "not JSON"),
        ] {
            let err = parse(line).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains(why), "{shown}");
            assert!(
                shown.contains(&String::from_utf8_lossy(line).into_owned()),
                "{shown}"
            );
        }
    }

    #[test]
    fn commands_render_as_one_json_line() {
        let quit = Command {
            execute: "quit".into(),
            arguments: None,
            id: None,
        };
        assert_eq!(quit.render(), b"{\"execute\":\"quit\"}\n");
        let with_args = Command {
            execute: "human-monitor-command".into(),
            arguments: Some(json!({"command-line": "info, \"status\""})),
            id: Some(4),
        };
        let line = with_args.render();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let back: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            back,
            json!({"execute": "human-monitor-command", "arguments": {"command-line": "info, \"status\""}, "id": 4})
        );
    }

    #[test]
    fn lines_are_split_across_partial_reads() {
        let mut buf = LineBuffer::default();
        buf.push(b"{\"return\": {}, \"id\"");
        assert!(buf.next_line().is_none());
        buf.push(b": 1}\r\n\r\n{\"event\": \"STOP\"}\r\n{\"ret");
        let got: Vec<Vec<u8>> = lines(&mut buf).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![
                b"{\"return\": {}, \"id\": 1}".to_vec(),
                b"{\"event\": \"STOP\"}".to_vec()
            ]
        );
        buf.push(b"urn\": {}}\n");
        assert_eq!(buf.next_line().unwrap().unwrap(), b"{\"return\": {}}");
    }

    #[test]
    fn an_overlong_line_is_one_error_and_the_stream_recovers() {
        let mut buf = LineBuffer::default();
        buf.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(matches!(
            buf.next_line(),
            Some(Err(QemuError::QmpMalformed { .. }))
        ));
        buf.push(b"yyyy");
        assert!(buf.next_line().is_none());
        buf.push(b"zz\n{\"event\": \"RESET\"}\n");
        assert_eq!(buf.next_line().unwrap().unwrap(), b"{\"event\": \"RESET\"}");
        assert!(buf.next_line().is_none());
    }

    /// Feed a byte stream through the line buffer and the session, collecting outputs.
    fn feed(session: &mut Session, buf: &mut LineBuffer, bytes: &[u8]) -> Vec<Output> {
        buf.push(bytes);
        lines(buf)
            .into_iter()
            .map(|line| session.handle(parse(&line.unwrap()).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn handshake_then_commands_with_events_interleaved_with_returns() {
        let mut s = Session::new();
        let mut buf = LineBuffer::default();
        assert!(
            s.command("quit", None).is_err(),
            "no commands before the handshake"
        );

        let mut stream = GREETING.to_vec();
        stream.extend_from_slice(b"\r\n");
        let out = feed(&mut s, &mut buf, &stream);
        assert_eq!(
            out,
            vec![Output::Send(
                b"{\"execute\":\"qmp_capabilities\",\"id\":1}\n".to_vec()
            )]
        );
        assert_eq!(s.greeting().map(|g| g.version), Some((7, 2, 22)));
        assert!(!s.is_ready());

        let out = feed(&mut s, &mut buf, b"{\"return\": {}, \"id\": 1}\r\n");
        assert_eq!(out, vec![Output::Ready]);

        let (id, line) = s.command("query-status", None).unwrap();
        assert_eq!(id, 2);
        assert_eq!(line, b"{\"execute\":\"query-status\",\"id\":2}\n");

        let out = feed(
            &mut s,
            &mut buf,
            b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 0}, \"event\": \"RESET\", \"data\": {\"guest\": true, \"reason\": \"guest-reset\"}}\r\n\
              {\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": 2}\r\n\
              {\"timestamp\": {\"seconds\": 2, \"microseconds\": 0}, \"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}}\r\n",
        );
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], Output::Event(e) if e.name == "RESET"));
        assert_eq!(
            out[1],
            Output::Reply {
                id: Some(2),
                result: Ok(json!({"status": "running", "singlestep": false, "running": true}))
            }
        );
        assert!(
            matches!(&out[2], Output::Event(e) if e.shutdown_reason() == Some("host-qmp-quit"))
        );

        let (id, _) = s.command("nope", None).unwrap();
        let out = feed(
            &mut s,
            &mut buf,
            format!("{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}, \"id\": {id}}}\r\n").as_bytes(),
        );
        assert!(matches!(
            &out[0],
            Output::Reply { id: Some(3), result: Err(f) } if f.class == "CommandNotFound"
        ));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut s = Session::new();
        let early = s.handle(Message::Return {
            id: Some(1),
            value: json!({}),
        });
        assert!(matches!(early, Err(QemuError::QmpProtocol { .. })));

        let mut s = Session::new();
        s.handle(parse(GREETING).unwrap()).unwrap();
        assert!(matches!(
            s.handle(parse(GREETING).unwrap()),
            Err(QemuError::QmpProtocol { .. })
        ));
        let refused = s.handle(Message::Error {
            id: Some(1),
            failure: Failure {
                class: "GenericError".into(),
                desc: "Capabilities negotiation is already complete".into(),
            },
        });
        assert!(
            matches!(refused, Err(QemuError::QmpCommand { ref command, .. }) if command == "qmp_capabilities"),
            "{refused:?}"
        );
        // Events are delivered in every state, even before the handshake completes.
        let mut s = Session::new();
        assert!(matches!(
            s.handle(parse(br#"{"event": "STOP"}"#).unwrap()),
            Ok(Output::Event(_))
        ));
    }
}

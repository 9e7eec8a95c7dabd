//! Watch streams: replay from history after a resourceVersion (410 Gone when it is too old),
//! then live events, filtered by namespace and selectors, with optional bookmarks.
//!
//! Each watcher has its own task and bounded queue: a slow client only delays itself, and one
//! that falls too far behind the shared broadcast is told to re-list (410), never writers.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::objects::{ListOptions, Objects, Target, matches};
use crate::store::{self, Event, EventType};

/// Watch parameters.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Start after this revision; `None` or 0 sends the current objects as ADDED first.
    pub resource_version: Option<u64>,
    /// Send BOOKMARK events.
    pub bookmarks: bool,
    /// Send the initial state then a bookmark marking its end (`sendInitialEvents`).
    pub send_initial_events: bool,
    /// Close the stream after this long.
    pub timeout: Option<Duration>,
    /// Send each object as a one-row `Table` (kubectl `get -w`) with these columns.
    pub table: Option<(
        Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition>,
        crate::table::IncludeObject,
    )>,
}

/// The object as the watcher asked for it: itself, or a one-row Table.
fn shape(object: &Value, opts: &WatchOptions) -> Value {
    match &opts.table {
        None => object.clone(),
        Some((columns, include)) => {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            crate::table::render_table(
                columns,
                std::slice::from_ref(object),
                *include,
                k8s_openapi::jiff::Timestamp::now(),
                rv,
                None,
            )
        }
    }
}

/// How often bookmarks are sent when asked for.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut s = json!({ "type": event_type, "object": object }).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn gone(requested: u64, oldest: u64) -> Bytes {
    line(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {requested} ({oldest})"),
            "reason": "Expired", "code": 410,
        }),
    )
}

/// What a watcher sees of one stored event, after namespace and selector filtering.
fn translate(event: &Event, prefix: &str, opts: &ListOptions) -> Option<(&'static str, Value)> {
    if !event.key.starts_with(prefix) {
        return None;
    }
    let now = matches(&event.object, opts);
    match event.event_type {
        EventType::Added => now.then(|| ("ADDED", event.object.clone())),
        EventType::Deleted => now.then(|| ("DELETED", event.object.clone())),
        EventType::Modified => {
            let before = event.prev.as_ref().is_some_and(|p| matches(p, opts));
            match (before, now) {
                (true, true) => Some(("MODIFIED", event.object.clone())),
                (false, true) => Some(("ADDED", event.object.clone())),
                (true, false) => Some(("DELETED", event.object.clone())),
                (false, false) => None,
            }
        }
    }
}

/// Start a watch; returns the receiving end of the event lines.
pub fn start(
    objects: &Objects,
    target: &Target,
    list: ListOptions,
    opts: WatchOptions,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let store = objects.store().clone();
    let mut live = store.subscribe();
    let prefix = store::prefix(
        &target.info.group,
        &target.info.plural,
        target.namespace.as_deref(),
    );
    let kind = target.info.kind.clone();
    let api_version = target.info.group_version();
    let objects = objects.clone();
    let target = target.clone();
    tokio::spawn(async move {
        let bookmark = |rev: u64, initial_end: bool| {
            let mut meta = json!({ "resourceVersion": rev.to_string() });
            if initial_end {
                meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
            }
            line(
                "BOOKMARK",
                &json!({ "kind": kind, "apiVersion": api_version, "metadata": meta }),
            )
        };
        let mut last = match opts
            .resource_version
            .filter(|rv| *rv > 0 && !opts.send_initial_events)
        {
            Some(rv) => {
                let Some(history) = store.history_after(rv) else {
                    let _ = tx.send(gone(rv, store.compacted() + 1)).await;
                    return;
                };
                let mut last = rv;
                for event in history {
                    last = event.rev;
                    if let Some((t, obj)) = translate(&event, &prefix, &list)
                        && tx.send(line(t, &shape(&obj, &opts))).await.is_err()
                    {
                        return;
                    }
                }
                last.max(rv)
            }
            None => {
                let Ok(crate::objects::ListPage {
                    items,
                    resource_version: rev,
                    ..
                }) = objects.list(
                    &target,
                    &ListOptions {
                        limit: None,
                        continue_token: None,
                        ..list.clone()
                    },
                )
                else {
                    return;
                };
                for obj in items {
                    if tx.send(line("ADDED", &shape(&obj, &opts))).await.is_err() {
                        return;
                    }
                }
                if opts.send_initial_events && tx.send(bookmark(rev, true)).await.is_err() {
                    return;
                }
                rev
            }
        };
        if opts.bookmarks && tx.send(bookmark(last, false)).await.is_err() {
            return;
        }
        let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.rev <= last {
                            continue;
                        }
                        last = event.rev;
                        if let Some((t, obj)) = translate(&event, &prefix, &list)
                            && tx.send(line(t, &shape(&obj, &opts))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the shared queue: tell the client to re-list.
                        let _ = tx.send(gone(last, store.compacted() + 1)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if opts.bookmarks => {
                    if tx.send(bookmark(last, false)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => return,
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// Convert an event receiver into an HTTP body stream.
pub fn body_stream(
    rx: mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
    )
}

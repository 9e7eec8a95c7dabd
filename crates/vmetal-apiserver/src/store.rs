//! The durable object store: every object as JSON under `<group>/<plural>/<namespace>/<name>`,
//! one monotonic revision counter that is the `resourceVersion` of every write, and a bounded
//! event history that watches replay from.
//!
//! Writes run one at a time under a lock: read the current state, decide, persist in one redb
//! transaction (fsync on commit), then apply to the in-memory copy and publish the events. A crash
//! at any point leaves either the old or the new state on disk, never a mix.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How many events watches can replay from.
pub const HISTORY_LIMIT: usize = 10_000;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened, read or written.
    #[error(
        "storage error in {path}: {reason}; check the data directory's permissions and free space"
    )]
    Io {
        /// Database path.
        path: String,
        /// What redb said.
        reason: String,
    },
    /// A stored record is not valid JSON (the file was damaged or written by something else).
    #[error("stored record {key} in {path} is corrupt: {reason}")]
    Corrupt {
        /// Database path.
        path: String,
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

/// One change, as stored in history and sent to watchers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Revision of the change.
    pub rev: u64,
    /// Kind of change.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Store key of the object.
    pub key: String,
    /// The object after the change (before it, for deletes).
    pub object: Value,
    /// The object before the change, for modifications (selector-filtered watches need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Value>,
}

/// A change a write wants to make.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or replace the object at `key`; its `metadata.resourceVersion` is set by the store.
    Put {
        /// Store key.
        key: String,
        /// The new object.
        object: Value,
    },
    /// Remove the object at `key`.
    Delete {
        /// Store key.
        key: String,
    },
}

struct State {
    rev: u64,
    /// Every event at or below this revision has been dropped from history.
    compacted: u64,
    objects: BTreeMap<String, Value>,
    history: VecDeque<Arc<Event>>,
}

/// The store. Share it behind an `Arc`.
pub struct Store {
    state: Mutex<State>,
    db: Option<Database>,
    path: String,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The store key of an object.
pub fn key(group: &str, plural: &str, namespace: &str, name: &str) -> String {
    format!("{}/{plural}/{namespace}/{name}", group_segment(group))
}

/// The key prefix of a resource, optionally within one namespace.
pub fn prefix(group: &str, plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{}/{plural}/{ns}/", group_segment(group)),
        None => format!("{}/{plural}/", group_segment(group)),
    }
}

fn group_segment(group: &str) -> &str {
    if group.is_empty() { "core" } else { group }
}

impl Store {
    /// An in-memory store (tests); nothing survives the process.
    pub fn in_memory() -> Self {
        Self::with_db(None, "<memory>".into(), State::empty())
    }

    /// Open (or create) the durable store in `dir/store.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("store.redb");
        let shown = path.display().to_string();
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: shown.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        let db = Database::create(&path).map_err(|e| io(&e))?;
        let init = db.begin_write().map_err(|e| io(&e))?;
        {
            init.open_table(OBJECTS).map_err(|e| io(&e))?;
            init.open_table(EVENTS).map_err(|e| io(&e))?;
            init.open_table(META).map_err(|e| io(&e))?;
        }
        init.commit().map_err(|e| io(&e))?;

        let mut state = State::empty();
        let read = db.begin_read().map_err(|e| io(&e))?;
        let meta = read.open_table(META).map_err(|e| io(&e))?;
        state.rev = meta
            .get("rev")
            .map_err(|e| io(&e))?
            .map_or(0, |v| v.value());
        state.compacted = meta
            .get("compacted")
            .map_err(|e| io(&e))?
            .map_or(0, |v| v.value());
        let objects = read.open_table(OBJECTS).map_err(|e| io(&e))?;
        for item in objects.iter().map_err(|e| io(&e))? {
            let (k, v) = item.map_err(|e| io(&e))?;
            let object = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                path: shown.clone(),
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            state.objects.insert(k.value().to_string(), object);
        }
        let events = read.open_table(EVENTS).map_err(|e| io(&e))?;
        for item in events.iter().map_err(|e| io(&e))? {
            let (k, v) = item.map_err(|e| io(&e))?;
            let event: Event =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    path: shown.clone(),
                    key: format!("event {}", k.value()),
                    reason: e.to_string(),
                })?;
            state.history.push_back(Arc::new(event));
        }
        drop((meta, objects, events, read));
        Ok(Self::with_db(Some(db), shown, state))
    }

    fn with_db(db: Option<Database>, path: String, state: State) -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            state: Mutex::new(state),
            db,
            path,
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current revision.
    pub fn rev(&self) -> u64 {
        self.lock().rev
    }

    /// The revision at or below which history has been dropped.
    pub fn compacted(&self) -> u64 {
        self.lock().compacted
    }

    /// The object at `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// Every object whose key starts with `prefix`, in key order, and the revision they are at.
    pub fn list(&self, prefix: &str) -> (Vec<(String, Value)>, u64) {
        let st = self.lock();
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (items, st.rev)
    }

    /// Subscribe to live events. Subscribe *before* reading history so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Events with revision greater than `after`, or `None` when history no longer reaches back
    /// that far (the caller answers 410 Gone).
    pub fn history_after(&self, after: u64) -> Option<Vec<Arc<Event>>> {
        let st = self.lock();
        if after < st.compacted {
            return None;
        }
        Some(
            st.history
                .iter()
                .filter(|e| e.rev > after)
                .cloned()
                .collect(),
        )
    }

    /// Run one write: `decide` sees the current objects and returns the changes to make (or an
    /// error, in which case nothing changes). Returns the objects as written, in op order.
    pub fn write<E: From<StoreError>>(
        &self,
        decide: impl FnOnce(&BTreeMap<String, Value>) -> Result<Vec<Op>, E>,
    ) -> Result<Vec<Value>, E> {
        let mut st = self.lock();
        let ops = decide(&st.objects)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut rev = st.rev;
        let mut events = Vec::with_capacity(ops.len());
        let mut written = Vec::with_capacity(ops.len());
        for op in ops {
            rev += 1;
            match op {
                Op::Put { key, mut object } => {
                    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
                    }
                    let prev = st.objects.get(&key).cloned();
                    let event_type = if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    written.push(object.clone());
                    events.push(Event {
                        rev,
                        event_type,
                        key,
                        object,
                        prev,
                    });
                }
                Op::Delete { key } => {
                    let Some(mut object) = st.objects.get(&key).cloned() else {
                        rev -= 1;
                        continue;
                    };
                    // A deleted object's last resourceVersion is the delete's revision.
                    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
                    }
                    written.push(object.clone());
                    events.push(Event {
                        rev,
                        event_type: EventType::Deleted,
                        key,
                        object,
                        prev: None,
                    });
                }
            }
        }
        let overflow = (st.history.len() + events.len()).saturating_sub(HISTORY_LIMIT);
        let new_compacted = if overflow > 0 {
            st.history
                .get(overflow.saturating_sub(1))
                .map_or(st.compacted, |e| e.rev)
        } else {
            st.compacted
        };
        self.persist(&events, rev, new_compacted)?;

        for event in &events {
            match event.event_type {
                EventType::Deleted => {
                    st.objects.remove(&event.key);
                }
                _ => {
                    st.objects.insert(event.key.clone(), event.object.clone());
                }
            }
        }
        st.rev = rev;
        for _ in 0..overflow.min(st.history.len()) {
            st.history.pop_front();
        }
        st.compacted = new_compacted;
        for event in events {
            let event = Arc::new(event);
            st.history.push_back(event.clone());
            // No receivers is fine; lagging receivers find out on their next recv.
            let _ = self.events.send(event);
        }
        Ok(written)
    }

    fn persist(&self, events: &[Event], rev: u64, compacted: u64) -> Result<(), StoreError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = db.begin_write().map_err(|e| io(&e))?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| io(&e))?;
            let mut history = txn.open_table(EVENTS).map_err(|e| io(&e))?;
            let mut meta = txn.open_table(META).map_err(|e| io(&e))?;
            for event in events {
                match event.event_type {
                    EventType::Deleted => {
                        objects.remove(event.key.as_str()).map_err(|e| io(&e))?;
                    }
                    _ => {
                        let bytes = serde_json::to_vec(&event.object).map_err(|e| io(&e))?;
                        objects
                            .insert(event.key.as_str(), bytes.as_slice())
                            .map_err(|e| io(&e))?;
                    }
                }
                let bytes = serde_json::to_vec(event).map_err(|e| io(&e))?;
                history
                    .insert(event.rev, bytes.as_slice())
                    .map_err(|e| io(&e))?;
            }
            history
                .retain_in(..=compacted, |_, _| false)
                .map_err(|e| io(&e))?;
            meta.insert("rev", rev).map_err(|e| io(&e))?;
            meta.insert("compacted", compacted).map_err(|e| io(&e))?;
        }
        txn.commit().map_err(|e| io(&e))?;
        Ok(())
    }
}

impl State {
    fn empty() -> Self {
        Self {
            rev: 0,
            compacted: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(store: &Store, key: &str, n: i64) -> Value {
        store
            .write::<StoreError>(|_| {
                Ok(vec![Op::Put {
                    key: key.into(),
                    object: json!({"metadata": {"name": key}, "n": n}),
                }])
            })
            .unwrap()
            .remove(0)
    }

    #[test]
    fn revisions_are_monotonic_and_stamped() {
        let store = Store::in_memory();
        let a = put(&store, "g/r/ns/a", 1);
        let b = put(&store, "g/r/ns/b", 2);
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(store.rev(), 2);
        let (items, rev) = store.list("g/r/ns/");
        assert_eq!(items.len(), 2);
        assert_eq!(rev, 2);
        assert!(store.list("g/r/other/").0.is_empty());
    }

    #[test]
    fn data_and_history_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            put(&store, "g/r/ns/a", 1);
            put(&store, "g/r/ns/a", 2);
            store
                .write::<StoreError>(|_| {
                    Ok(vec![Op::Delete {
                        key: "g/r/ns/a".into(),
                    }])
                })
                .unwrap();
            put(&store, "g/r/ns/b", 3);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.rev(), 4);
        assert!(store.get("g/r/ns/a").is_none());
        assert_eq!(
            store.get("g/r/ns/b").unwrap()["metadata"]["resourceVersion"],
            "4"
        );
        let history = store.history_after(1).unwrap();
        let kinds: Vec<_> = history.iter().map(|e| (e.rev, e.event_type)).collect();
        assert_eq!(
            kinds,
            [
                (2, EventType::Modified),
                (3, EventType::Deleted),
                (4, EventType::Added)
            ]
        );
        assert_eq!(
            put(&store, "g/r/ns/c", 5)["metadata"]["resourceVersion"],
            "5"
        );
    }

    #[test]
    fn history_is_bounded_and_old_revisions_are_gone() {
        let store = Store::in_memory();
        for i in 0..(HISTORY_LIMIT as i64 + 10) {
            put(&store, "g/r/ns/a", i);
        }
        assert_eq!(store.compacted(), 10);
        assert!(store.history_after(5).is_none());
        assert_eq!(store.history_after(10).unwrap().len(), HISTORY_LIMIT);
    }

    #[test]
    fn failed_decisions_change_nothing() {
        let store = Store::in_memory();
        let r: Result<Vec<Value>, StoreError> = store.write(|_| {
            Err(StoreError::Io {
                path: "x".into(),
                reason: "no".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(store.rev(), 0);
    }

    #[test]
    fn subscribers_see_events() {
        let store = Store::in_memory();
        let mut rx = store.subscribe();
        put(&store, "g/r/ns/a", 1);
        let e = rx.try_recv().unwrap();
        assert_eq!(e.event_type, EventType::Added);
        assert_eq!(e.rev, 1);
    }
}

//! The object store (etcd's part): objects as JSON by kind, namespace and name, one global
//! resourceVersion counter, and the history of changes watches are served from.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

use super::resources::{Kind, info};

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    /// ADDED, MODIFIED or DELETED.
    pub etype: &'static str,
    pub object: Value,
    /// The object before a MODIFIED (a selector may stop or start matching).
    pub prev: Option<Value>,
}

pub type Key = (Kind, String, String);

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Watches must start at or after this resourceVersion (older: 410 Gone).
    floor: u64,
    /// How many changes are kept (the watch cache's window).
    window: usize,
}

/// `metadata.X` as a string ("" when absent).
pub fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn key_of(kind: Kind, obj: &Value) -> Key {
    (
        kind,
        meta(obj, "namespace").to_string(),
        meta(obj, "name").to_string(),
    )
}

impl Store {
    pub fn new() -> Store {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            window: 100_000,
        }
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(kind, ns.to_string(), name.to_string()))
    }

    /// Objects of `kind` (in `ns` when given), ordered by namespace and name.
    pub fn iter<'a>(&'a self, kind: Kind, ns: Option<&'a str>) -> impl Iterator<Item = &'a Value> {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .filter(move |((_, n, _), _)| ns.is_none_or(|ns| n == ns))
            .map(|(_, v)| v)
    }

    /// Copies of the objects of `kind` (in `ns` when given), ordered by namespace and name.
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        self.iter(kind, ns).cloned().collect()
    }

    pub fn find_uid(&self, kind: Kind, uid: &str) -> Option<Value> {
        self.iter(kind, None)
            .find(|o| meta(o, "uid") == uid)
            .cloned()
    }

    fn stamp(&mut self, kind: Kind, obj: &mut Value) -> u64 {
        self.rv += 1;
        let r = info(kind);
        if let Some(o) = obj.as_object_mut() {
            o.insert("kind".into(), json!(r.kind_name));
            o.insert("apiVersion".into(), json!(r.api_version()));
        }
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.rv
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.window {
            if let Some(c) = self.history.pop_front() {
                self.floor = c.rv;
            }
        }
    }

    /// Stores a new object (the caller has checked it does not exist); returns it as stored.
    pub fn create(&mut self, kind: Kind, mut obj: Value) -> Value {
        let rv = self.stamp(kind, &mut obj);
        self.objects.insert(key_of(kind, &obj), obj.clone());
        self.record(Change {
            rv,
            kind,
            etype: "ADDED",
            object: obj.clone(),
            prev: None,
        });
        obj
    }

    /// Replaces an existing object when it differs; returns it as stored.
    pub fn put(&mut self, kind: Kind, mut obj: Value) -> Value {
        let key = key_of(kind, &obj);
        let prev = self.objects.get(&key).cloned();
        if let Some(p) = &prev {
            let mut same = obj.clone();
            same["metadata"]["resourceVersion"] = p["metadata"]["resourceVersion"].clone();
            if let Some(o) = same.as_object_mut() {
                o.insert("kind".into(), p["kind"].clone());
                o.insert("apiVersion".into(), p["apiVersion"].clone());
            }
            if same == *p {
                return p.clone();
            }
        }
        let rv = self.stamp(kind, &mut obj);
        self.objects.insert(key, obj.clone());
        self.record(Change {
            rv,
            kind,
            etype: if prev.is_some() { "MODIFIED" } else { "ADDED" },
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Applies `f` to a copy of the object and stores it when it changed; None when absent.
    pub fn update(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut obj = self.get(kind, ns, name)?.clone();
        f(&mut obj);
        Some(self.put(kind, obj))
    }

    /// Removes an object; the DELETED event carries a new resourceVersion.
    pub fn remove(&mut self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .remove(&(kind, ns.to_string(), name.to_string()))?;
        let rv = self.stamp(kind, &mut obj);
        self.record(Change {
            rv,
            kind,
            etype: "DELETED",
            object: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    /// Changes after `rv`, or Err(floor) when some of them are no longer kept.
    pub fn changes_since(&self, rv: u64, kind: Kind) -> Result<Vec<Change>, u64> {
        if rv < self.floor {
            return Err(self.floor);
        }
        // The history is ordered by resourceVersion.
        let from = self.history.partition_point(|c| c.rv <= rv);
        Ok(self
            .history
            .range(from..)
            .filter(|c| c.kind == kind)
            .cloned()
            .collect())
    }

    /// Forgets the history: a watch from any resourceVersion before now gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }
}

//! The gate between a cluster member's DER actors and its devices.
//!
//! A member publishes desired documents only while it acts for its shards
//! (`Cluster::acting`: it hears from the leader), so two members never both
//! publish for one site for long. A document made while the gate is closed
//! is **held**, the newest per DER (or per site), not dropped: a member
//! often builds its part of the fleet for a new placement, and the leader
//! splits orders onto it, a moment before it hears the leader again. Had
//! those documents been dropped, the devices would never hear of the
//! setpoints (a later re-split changes nothing, so sends nothing), and the
//! orders would never be acknowledged; the rolling-restart container test
//! caught that now and then.
//!
//! When the gate opens, the held documents of sites this member runs now
//! and that were made within the last `max_age` (the detection window) go
//! out; the rest are dropped (their sites moved, or they are too old to
//! trust). A document made while open goes out at once and replaces any
//! held one, under the same lock, so an older document never follows a
//! newer one to the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vpp_actors::DeviceLink;
use vpp_domain::NodeId;
use vpp_protocol::Desired;

/// A document made while the gate was closed.
enum HeldDoc {
    Der(NodeId, Desired),
    Site(Vec<(NodeId, Desired)>),
}

/// Held documents: by (site, DER) for DER documents, (site, None) for site
/// ones; each with when it was made.
type Held = HashMap<(NodeId, Option<NodeId>), (Instant, HeldDoc)>;

/// See the module doc.
pub(crate) struct Gate {
    inner: Arc<dyn DeviceLink>,
    /// Whether this member's DER actors may publish: always for a single
    /// node; in a cluster while it acts for its shards (`Cluster::acting`).
    open: AtomicBool,
    /// Whether anything is held (lets the open path skip the lock).
    any_held: AtomicBool,
    held: Mutex<Held>,
}

impl Gate {
    pub(crate) fn new(inner: Arc<dyn DeviceLink>, open: bool) -> Self {
        Self {
            inner,
            open: AtomicBool::new(open),
            any_held: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether documents go straight out.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes the gate: documents are held from now on.
    pub(crate) fn close(&self) {
        let _h = self.held();
        self.open.store(false, Ordering::SeqCst);
    }

    /// Opens the gate and sends the held documents of the sites `keep`
    /// accepts that are at most `max_age` old; drops the others. Returns
    /// `(sent, dropped)`.
    pub(crate) fn open(&self, keep: impl Fn(&NodeId) -> bool, max_age: Duration) -> (usize, usize) {
        let mut h = self.held();
        self.open.store(true, Ordering::SeqCst);
        let (mut sent, mut dropped) = (0, 0);
        for ((site, _), (at, doc)) in h.drain() {
            if !keep(&site) || at.elapsed() > max_age {
                dropped += 1;
                continue;
            }
            sent += 1;
            match doc {
                HeldDoc::Der(der, d) => self.inner.desired(&site, &der, &d),
                HeldDoc::Site(docs) => {
                    let docs: Vec<(&NodeId, Desired)> =
                        docs.iter().map(|(d, doc)| (d, doc.clone())).collect();
                    self.inner.desired_site(&site, &docs);
                }
            }
        }
        self.any_held.store(false, Ordering::SeqCst);
        (sent, dropped)
    }

    /// Sends `send` if open (replacing what is held for `key`), else holds
    /// `doc` under `key`.
    fn pass(
        &self,
        key: (NodeId, Option<NodeId>),
        doc: impl FnOnce() -> HeldDoc,
        send: impl FnOnce(),
    ) {
        if self.open.load(Ordering::SeqCst) && !self.any_held.load(Ordering::SeqCst) {
            send();
            return;
        }
        let mut h = self.held();
        if self.open.load(Ordering::SeqCst) {
            h.remove(&key);
            send();
        } else {
            h.insert(key, (Instant::now(), doc()));
            self.any_held.store(true, Ordering::SeqCst);
        }
    }
}

impl DeviceLink for Gate {
    fn desired(&self, site: &NodeId, der: &NodeId, doc: &Desired) {
        self.pass(
            (site.clone(), Some(der.clone())),
            || HeldDoc::Der(der.clone(), doc.clone()),
            || self.inner.desired(site, der, doc),
        );
    }

    fn site_documents(&self) -> bool {
        self.inner.site_documents()
    }

    fn desired_site(&self, site: &NodeId, docs: &[(&NodeId, Desired)]) {
        self.pass(
            (site.clone(), None),
            || {
                HeldDoc::Site(
                    docs.iter()
                        .map(|(d, doc)| ((*d).clone(), doc.clone()))
                        .collect(),
                )
            },
            || self.inner.desired_site(site, docs),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches the devices: (site, DER or "*", version).
    #[derive(Default)]
    struct Record(Mutex<Vec<(String, String, u64)>>);

    impl DeviceLink for Record {
        fn desired(&self, site: &NodeId, der: &NodeId, doc: &Desired) {
            self.0
                .lock()
                .unwrap()
                .push((site.to_string(), der.to_string(), doc.version));
        }
        fn site_documents(&self) -> bool {
            false
        }
        fn desired_site(&self, site: &NodeId, docs: &[(&NodeId, Desired)]) {
            let v = docs.iter().map(|(_, d)| d.version).max().unwrap_or(0);
            self.0
                .lock()
                .unwrap()
                .push((site.to_string(), "*".into(), v));
        }
    }

    fn doc(version: u64) -> Desired {
        Desired {
            v: 1,
            version,
            setpoints: Vec::new(),
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn documents_made_while_closed_go_out_when_it_opens_newest_first_and_only_for_sites_kept() {
        let rec = Arc::new(Record::default());
        let gate = Gate::new(rec.clone(), false);
        let (a, b) = (id("site-a"), id("site-b"));
        gate.desired(&a, &id("a-1"), &doc(1));
        gate.desired(&a, &id("a-1"), &doc(2)); // replaces version 1
        gate.desired(&b, &id("b-1"), &doc(7)); // site b moved away
        gate.desired_site(&a, &[(&id("a-2"), doc(3))]);
        assert!(
            rec.0.lock().unwrap().is_empty(),
            "nothing goes out while closed"
        );
        let (sent, dropped) = gate.open(|s| *s == a, Duration::from_secs(3));
        assert_eq!((sent, dropped), (2, 1));
        assert!(gate.is_open());
        let mut got = rec.0.lock().unwrap().clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("site-a".into(), "*".into(), 3),
                ("site-a".into(), "a-1".into(), 2)
            ]
        );
        // Open: straight through; nothing is held any more.
        gate.desired(&a, &id("a-1"), &doc(4));
        assert_eq!(rec.0.lock().unwrap().len(), 3);
        assert_eq!(gate.open(|_| true, Duration::from_secs(3)), (0, 0));
    }

    #[test]
    fn held_documents_older_than_the_window_are_dropped() {
        let rec = Arc::new(Record::default());
        let gate = Gate::new(rec.clone(), true);
        gate.close();
        gate.desired(&id("site-a"), &id("a-1"), &doc(1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(gate.open(|_| true, Duration::from_millis(10)), (0, 1));
        assert!(rec.0.lock().unwrap().is_empty());
    }
}

//! Shards: which member runs which sites and virtual DERs, and the messages
//! between the parts of the tree on different members.
//!
//! ```text
//!   leader, every 500 ms: ping every member over the mesh ──► live set
//!     changed? ──► Command::SetLive { epoch + 1, members } (replicated)
//!   every member, on applying it: Placement::new(epoch, members)
//!     ──► rebuild its part of the fleet, subscribe to its shards' topics
//!   site  s  runs on  argmax_m h(m, shard_of(s))      (rendezvous hashing)
//!   virtual DER v runs on argmax_m h(m, v)
//! ```
//!
//! Rendezvous hashing moves only the shards of a member that leaves (or
//! comes back): the others keep theirs. The 256 shards are the device
//! protocol's (`vpp_protocol::topic::shard_of`), so a member subscribes to
//! exactly the topics of the sites it runs.
//!
//! **Draining.** A draining member answers pings with `leaving`; the leader
//! then replicates a live set without it.
//!
//! **Fencing.** A member acts for its shards (publishes desired documents)
//! only while it hears from the leader: a follower within `detect_ms` of the
//! leader's last ping, the leader while a quorum acknowledged it within
//! `detect_ms`. The leader drops a member from the live set after `detect_ms`
//! without an answer. So a member cut off from the others goes quiet about
//! when the others take its shards over: no site has two active owners for
//! longer than the detection window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use vpp_actors::{Fleet, RemoteCall, RemoteCast, RemoteLink, RemoteReply};
use vpp_domain::{NodeId, NodeKind};
use vpp_protocol::topic::{shard_of, SHARDS};

use super::mesh::{Mesh, MeshHandler};

/// Which member runs each shard and virtual DER, for one set of live members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Grows with every change of the live set (0: not replicated yet, every
    /// configured member counts as live).
    pub epoch: u64,
    /// Live members, sorted.
    pub live: Vec<String>,
    /// This member.
    me: String,
    /// Owner of each shard (index into `live`).
    shard_owner: Vec<u16>,
}

/// Rendezvous score of `member` for `key`: FNV-1a, then a 64-bit finaliser
/// (FNV alone spreads similar keys badly).
fn score(member: &str, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0xff]).chain(key.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Placement {
    /// The placement for `live` members, seen from member `me`.
    pub fn new(epoch: u64, mut live: Vec<String>, me: &str) -> Placement {
        live.sort();
        live.dedup();
        let shard_owner = (0..SHARDS)
            .map(|s| Self::pick(&live, &[b's', s as u8]).unwrap_or(u16::MAX))
            .collect();
        Placement {
            epoch,
            live,
            me: me.to_string(),
            shard_owner,
        }
    }

    fn pick(live: &[String], key: &[u8]) -> Option<u16> {
        live.iter()
            .enumerate()
            .max_by_key(|(_, m)| score(m, key))
            .map(|(i, _)| i as u16)
    }

    /// The member that runs shard `shard`.
    pub fn shard_owner(&self, shard: u8) -> Option<&str> {
        let i = *self.shard_owner.get(shard as usize)?;
        self.live.get(i as usize).map(String::as_str)
    }

    /// The member that runs aggregate `id` (a site: its shard's owner; a
    /// virtual DER: by its id). DERs run with their site.
    pub fn owner(&self, id: &NodeId, kind: NodeKind) -> Option<&str> {
        match kind {
            NodeKind::Site => self.shard_owner(shard_of(id.as_str())),
            _ => {
                let mut key = Vec::with_capacity(id.as_str().len() + 1);
                key.push(b'v');
                key.extend_from_slice(id.as_str().as_bytes());
                let i = Self::pick(&self.live, &key)?;
                self.live.get(i as usize).map(String::as_str)
            }
        }
    }

    /// The shards `member` runs.
    pub fn shards_of(&self, member: &str) -> Vec<u8> {
        (0..SHARDS)
            .map(|s| s as u8)
            .filter(|s| self.shard_owner(*s) == Some(member))
            .collect()
    }

    /// The shards this member runs.
    pub fn mine(&self) -> Vec<u8> {
        self.shards_of(&self.me)
    }

    /// Shards per member, for the operator view.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> =
            self.live.iter().map(|m| (m.clone(), 0usize)).collect();
        for s in 0..SHARDS {
            if let Some(m) = self.shard_owner(s as u8) {
                *out.entry(m.to_string()).or_default() += 1;
            }
        }
        out
    }
}

/// What travels between members on the mesh (postcard).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Wire {
    /// For a node that runs on the receiver.
    Cast(RemoteCast),
    /// For a node that runs on the receiver; answered with `Reply`.
    Call(RemoteCall),
    /// The leader checks the receiver is alive (answered with `Pong`).
    Ping {
        /// The leader's name.
        from: String,
    },
}

/// Answers on the mesh.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum WireReply {
    Reply(RemoteReply),
    Pong {
        /// The placement epoch the receiver's fleet was built for.
        epoch: u64,
        /// The receiver is draining: give its shards away.
        leaving: bool,
    },
    Bad(String),
}

/// What the mesh side of a member shares with the rest of it.
pub(crate) struct Shared {
    /// The placement in force here.
    pub(crate) placement: RwLock<Arc<Placement>>,
    /// The fleet serving remote requests (`None` while it is rebuilt).
    pub(crate) fleet: RwLock<Option<Fleet>>,
    /// The placement epoch the fleet here was built for.
    pub(crate) fleet_epoch: AtomicU64,
    /// When the leader last pinged this member, Unix ms.
    pub(crate) contact_ms: AtomicU64,
    /// This member is draining.
    pub(crate) leaving: AtomicBool,
    /// Undecodable mesh messages.
    pub(crate) bad_messages: AtomicU64,
    /// Casts that could not be sent (the receiver repairs them).
    pub(crate) casts_lost: AtomicU64,
}

impl Shared {
    pub(crate) fn new(placement: Placement) -> Shared {
        Shared {
            placement: RwLock::new(Arc::new(placement)),
            fleet: RwLock::new(None),
            fleet_epoch: AtomicU64::new(0),
            contact_ms: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
            bad_messages: AtomicU64::new(0),
            casts_lost: AtomicU64::new(0),
        }
    }

    pub(crate) fn placement(&self) -> Arc<Placement> {
        self.placement
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn fleet(&self) -> Option<Fleet> {
        self.fleet.read().ok().and_then(|f| f.clone())
    }

    /// Counts and logs an undecodable mesh message; its answer.
    fn bad(&self, why: String) -> WireReply {
        self.bad_messages.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %why, "undecodable message from another member");
        WireReply::Bad(why)
    }
}

/// Serves what other members send this one.
pub(super) struct Region {
    pub(super) shared: Arc<Shared>,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

impl MeshHandler for Region {
    fn cast(&self, bytes: Vec<u8>) {
        match postcard::from_bytes::<Wire>(&bytes) {
            Ok(Wire::Cast(c)) => {
                if let Some(f) = self.shared.fleet() {
                    f.serve_cast(c);
                }
            }
            Ok(other) => {
                self.shared.bad(format!("{other:?} sent as a cast"));
            }
            Err(e) => {
                self.shared.bad(format!("mesh cast: {e}"));
            }
        }
    }

    fn call(&self, bytes: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let reply = match postcard::from_bytes::<Wire>(&bytes) {
                Ok(Wire::Call(c)) => match shared.fleet() {
                    Some(f) => WireReply::Reply(f.serve_call(c).await),
                    None => WireReply::Reply(RemoteReply::Failed(
                        "this member is rebuilding its part of the fleet".into(),
                    )),
                },
                Ok(Wire::Ping { .. }) => {
                    shared
                        .contact_ms
                        .store(vpp_actors::now_ms(), Ordering::SeqCst);
                    WireReply::Pong {
                        epoch: shared.fleet_epoch.load(Ordering::SeqCst),
                        leaving: shared.leaving.load(Ordering::SeqCst),
                    }
                }
                Ok(Wire::Cast(_)) => shared.bad("a cast sent as a call".into()),
                Err(e) => shared.bad(format!("mesh call: {e}")),
            };
            encode(&reply)
        })
    }
}

/// Reaches nodes on other members through the mesh, by the placement in
/// force.
pub(crate) struct MeshLink {
    pub(super) mesh: Arc<Mesh>,
    pub(super) shared: Arc<Shared>,
    pub(super) me: String,
}

impl RemoteLink for MeshLink {
    fn is_local(&self, id: &NodeId, kind: NodeKind) -> bool {
        self.shared.placement().owner(id, kind) == Some(self.me.as_str())
    }

    fn losses(&self) -> u64 {
        self.mesh.losses() + self.shared.casts_lost.load(Ordering::Relaxed)
    }

    fn cast(&self, kind: NodeKind, msg: RemoteCast) {
        let placement = self.shared.placement();
        let sent = match placement.owner(msg.to(), kind) {
            Some(m) if m != self.me => self.mesh.cast(m, encode(&Wire::Cast(msg))).is_ok(),
            _ => false,
        };
        if !sent {
            self.shared.casts_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn call(
        &self,
        route: (&NodeId, NodeKind),
        msg: RemoteCall,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RemoteReply, String>> {
        let placement = self.shared.placement();
        let owner = placement.owner(route.0, route.1).map(str::to_string);
        let (mesh, me) = (self.mesh.clone(), self.me.clone());
        let id = route.0.clone();
        Box::pin(async move {
            let owner = owner.ok_or_else(|| format!("no live member runs {id}"))?;
            if owner == me {
                return Err(format!("{id} moves here; this member is rebuilding"));
            }
            let bytes = mesh.call(&owner, encode(&Wire::Call(msg)), timeout).await?;
            match postcard::from_bytes::<WireReply>(&bytes) {
                Ok(WireReply::Reply(r)) => Ok(r),
                Ok(other) => Err(format!("{owner} answered {other:?}")),
                Err(e) => Err(format!("{owner} sent an undecodable answer: {e}")),
            }
        })
    }
}

/// Pings `member`: its fleet's placement epoch and whether it is leaving.
pub(super) async fn ping(
    mesh: &Mesh,
    me: &str,
    member: &str,
    timeout: Duration,
) -> Result<(u64, bool), String> {
    let bytes = mesh
        .call(
            member,
            encode(&Wire::Ping {
                from: me.to_string(),
            }),
            timeout,
        )
        .await?;
    match postcard::from_bytes::<WireReply>(&bytes) {
        Ok(WireReply::Pong { epoch, leaving }) => Ok((epoch, leaving)),
        Ok(other) => Err(format!("{member} answered {other:?}")),
        Err(e) => Err(format!("{member}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("vpp-{i}")).collect()
    }

    #[test]
    fn every_shard_has_one_live_owner_and_the_spread_is_even() {
        let p = Placement::new(1, names(3), "vpp-0");
        let counts = p.counts();
        assert_eq!(counts.values().sum::<usize>(), SHARDS as usize);
        for (m, n) in &counts {
            assert!((60..=110).contains(n), "{m} owns {n} of 256 shards");
        }
        // Every member agrees, whatever order it was given the list in.
        let q = Placement::new(
            1,
            vec!["vpp-2".into(), "vpp-0".into(), "vpp-1".into()],
            "vpp-1",
        );
        for s in 0..=255u8 {
            assert_eq!(p.shard_owner(s), q.shard_owner(s));
        }
        assert_eq!(p.mine().len(), counts["vpp-0"]);
    }

    #[test]
    fn losing_a_member_moves_only_its_shards() {
        let all = Placement::new(1, names(3), "vpp-0");
        let two = Placement::new(2, vec!["vpp-0".into(), "vpp-2".into()], "vpp-0");
        for s in 0..=255u8 {
            match all.shard_owner(s) {
                Some("vpp-1") => assert_ne!(two.shard_owner(s), Some("vpp-1")),
                owner => assert_eq!(two.shard_owner(s), owner, "shard {s} moved needlessly"),
            }
        }
        // And back: the returning member gets exactly its old shards.
        let back = Placement::new(3, names(3), "vpp-0");
        assert_eq!(back.shards_of("vpp-1"), all.shards_of("vpp-1"));
    }

    #[tokio::test]
    async fn undecodable_mesh_messages_are_counted_and_answered_bad() {
        let shared = Arc::new(Shared::new(Placement::new(0, names(3), "vpp-0")));
        let region = Region {
            shared: shared.clone(),
        };
        region.cast(vec![0xff, 0x00, 0x13]);
        let answer = region.call(b"not postcard".to_vec()).await;
        assert!(matches!(
            postcard::from_bytes::<WireReply>(&answer),
            Ok(WireReply::Bad(_))
        ));
        // A well-formed call for a member with no fleet yet: answered, not bad.
        let ping = encode(&Wire::Ping {
            from: "vpp-1".into(),
        });
        let answer = region.call(ping).await;
        assert!(matches!(
            postcard::from_bytes::<WireReply>(&answer),
            Ok(WireReply::Pong {
                epoch: 0,
                leaving: false
            })
        ));
        assert_eq!(shared.bad_messages.load(Ordering::Relaxed), 2);
        assert!(
            shared.contact_ms.load(Ordering::Relaxed) > 0,
            "a ping is contact"
        );
    }

    #[test]
    fn sites_follow_their_shard_and_virtual_ders_spread() {
        let p = Placement::new(1, names(3), "vpp-0");
        let site = NodeId::new("site-42").unwrap();
        assert_eq!(
            p.owner(&site, NodeKind::Site),
            p.shard_owner(shard_of("site-42"))
        );
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..300 {
            let v = NodeId::new(format!("region-{i}")).unwrap();
            *per.entry(p.owner(&v, NodeKind::VirtualDer).unwrap())
                .or_default() += 1;
        }
        assert_eq!(per.len(), 3, "virtual DERs land on every member: {per:?}");
        assert!(Placement::new(1, vec![], "x")
            .owner(&site, NodeKind::Site)
            .is_none());
    }
}

//! The decision table: which IPs and ranges CrowdSec has decided against, and until when.
//!
//! Invariants: a lookup is a read of an immutable value (the sync task builds a new table and
//! swaps it in, so readers never wait for an update); single addresses live in sharded hash
//! maps that are copied per shard on change, so a small delta copies a few shards, not the
//! table; ranges stay ranges (CIDRs nest or are disjoint, so they flatten into sorted segments
//! answered by binary search); every decision expires locally at its own deadline even if the
//! LAPI never says so.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The remediation a CrowdSec decision asks for (its `type`). Every remediation is enforced
/// as a deny (403); `Ban` wins over the others when several apply, so logs and metrics show
/// the strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remediation {
    /// `ban`.
    Ban,
    /// A decision type the gate has no special handling for; counted as a ban.
    Other,
    /// `captcha`: the gate serves no captcha, so it denies.
    Captcha,
}

impl Remediation {
    /// The remediation of a decision's `type`, case-insensitively.
    pub fn from_type(t: &str) -> Remediation {
        if t.eq_ignore_ascii_case("ban") {
            Remediation::Ban
        } else if t.eq_ignore_ascii_case("captcha") {
            Remediation::Captcha
        } else {
            Remediation::Other
        }
    }

    /// The `type` label of the decisions gauge.
    pub fn as_str(self) -> &'static str {
        match self {
            Remediation::Ban => "ban",
            Remediation::Other => "other",
            Remediation::Captcha => "captcha",
        }
    }

    const ALL: [Remediation; 3] = [Remediation::Ban, Remediation::Other, Remediation::Captcha];

    fn index(self) -> usize {
        self as usize
    }
}

/// Expiry per kind in Unix seconds; 0 means none. Merging takes the later expiry of each kind,
/// which is exactly what "covered by any of these decisions" means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots([u32; 3]);

impl Slots {
    fn kind(&self, now: u32) -> Option<Remediation> {
        Remediation::ALL
            .into_iter()
            .find(|k| self.0[k.index()] > now)
    }

    fn max(self, other: Slots) -> Slots {
        Slots([
            self.0[0].max(other.0[0]),
            self.0[1].max(other.0[1]),
            self.0[2].max(other.0[2]),
        ])
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 3]
    }
}

/// What a decision applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One address (IPv4-mapped IPv6 stored as IPv4).
    Ip(IpAddr),
    /// A network, host bits cleared.
    Range(IpNet),
}

/// One decision to add or delete, already parsed and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// The LAPI's decision id: an addition with the id of a decision the table holds replaces
    /// it; decisions of other types on the same address live on until their own deletion or
    /// expiry, as in the LAPI. See [`synthetic_id`] for decisions that come without one.
    pub id: u64,
    /// The address or range.
    pub target: Target,
    /// The decision's remediation.
    pub kind: Remediation,
    /// Unix seconds; ignored for deletions.
    pub until: u32,
}

/// The id of a decision that arrived without one (the LAPI always sends ids; a stand-in may
/// not): derived from its target and type, with the top bit set so that it never equals a LAPI
/// id (those are positive 63-bit integers). An id-less deletion then removes the id-less
/// decision of the same target and type.
pub fn synthetic_id(target: &Target, kind: Remediation) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6a61_636b_6572).build_hasher();
    target.hash(&mut h);
    kind.hash(&mut h);
    h.finish() | 1 << 63
}

/// One decision as the table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    id: u64,
    until: u32,
    kind: Remediation,
}

/// A lone decision whose id fits 32 bits: what nearly every address holds, kept in 12 bytes
/// (the million-decision memory budget depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct One {
    id: u32,
    until: u32,
    kind: Remediation,
}

impl From<One> for Decision {
    fn from(o: One) -> Self {
        Decision {
            id: u64::from(o.id),
            until: o.until,
            kind: o.kind,
        }
    }
}

impl Decision {
    fn as_one(self) -> Option<One> {
        Some(One {
            id: u32::try_from(self.id).ok()?,
            until: self.until,
            kind: self.kind,
        })
    }
}

/// The strongest of some kinds (`Ban`, then `Other`, then `Captcha`).
fn strongest(kinds: impl Iterator<Item = Remediation>) -> Option<Remediation> {
    kinds.min_by_key(|k| k.index())
}

/// The slots (latest expiry per kind) of a list of decisions.
fn slots_of(decisions: &[Decision]) -> Slots {
    let mut s = Slots::default();
    for d in decisions {
        let i = d.kind.index();
        s.0[i] = s.0[i].max(d.until);
    }
    s
}

/// Adds `d` to a target's decisions (replacing the one with its id); true when it is new.
fn add_to(list: &mut Vec<Decision>, d: Decision, counts: &mut [u64; 3]) {
    match list.iter_mut().find(|x| x.id == d.id) {
        Some(x) => {
            counts[x.kind.index()] = counts[x.kind.index()].saturating_sub(1);
            counts[d.kind.index()] += 1;
            *x = d;
        }
        None => {
            counts[d.kind.index()] += 1;
            list.push(d);
        }
    }
}

/// Removes the decisions of `kind` from a target's decisions.
///
/// The LAPI's stream reports a deletion only for the decision of a (scope, type, value) group
/// with the latest expiry, and only once it ended (`longestDecisionForScopeTypeValue` in
/// CrowdSec's database code): every other decision of the group has ended by then, and the
/// deletions of those that ended first are never sent. So a deletion takes the whole group.
fn delete_from(list: &mut Vec<Decision>, kind: Remediation, counts: &mut [u64; 3]) {
    list.retain(|x| {
        if x.kind == kind {
            counts[x.kind.index()] = counts[x.kind.index()].saturating_sub(1);
            false
        } else {
            true
        }
    });
}

/// Removes the decisions expired at `now`; true when any was.
fn expire_from(list: &mut Vec<Decision>, now: u32, counts: &mut [u64; 3]) -> bool {
    let before = list.len();
    list.retain(|x| {
        if x.until <= now {
            counts[x.kind.index()] = counts[x.kind.index()].saturating_sub(1);
            false
        } else {
            true
        }
    });
    list.len() != before
}

/// One answer of the stream endpoint: deletions are applied before additions, so a decision
/// deleted and re-added within one interval (or a deletion the LAPI repeats) ends up present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Decisions to remove, applied first.
    pub deleted: Vec<Op>,
    /// Decisions to add.
    pub new: Vec<Op>,
}

const SHARDS: usize = 256;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The single addresses of one shard. Every address is in `one`: its lone decision (with a
/// 32-bit id), or [`SEE_MANY`] when its decisions are in `many` (several decisions, or an id past
/// 32 bits). A miss is therefore one hash lookup, however many addresses are in `many`.
#[derive(Clone)]
struct Shard<K> {
    one: Map<K, One>,
    many: Map<K, Vec<Decision>>,
}

/// The `one` entry of an address whose decisions are in `many`. No decision has `until == 0`
/// (a deadline is always after the moment it was computed).
const SEE_MANY: One = One {
    id: 0,
    until: 0,
    kind: Remediation::Ban,
};

impl<K: std::hash::Hash + Eq + Copy> Shard<K> {
    fn new(hasher: foldhash::fast::RandomState) -> Self {
        Shard {
            one: Map::with_hasher(hasher),
            many: Map::with_hasher(hasher),
        }
    }

    #[inline]
    fn lookup(&self, k: &K, now: u32) -> Option<Remediation> {
        let o = self.one.get(k)?;
        if o.until > now {
            return Some(o.kind);
        }
        if *o != SEE_MANY {
            return None;
        }
        let list = self.many.get(k)?;
        strongest(list.iter().filter(|d| d.until > now).map(|d| d.kind))
    }

    fn add(&mut self, k: K, d: Decision, counts: &mut [u64; 3]) {
        if let Some(list) = self.many.get_mut(&k) {
            add_to(list, d, counts);
            return;
        }
        counts[d.kind.index()] += 1;
        match self.one.get_mut(&k) {
            Some(o) if u64::from(o.id) == d.id => {
                counts[o.kind.index()] = counts[o.kind.index()].saturating_sub(1);
                o.until = d.until;
                o.kind = d.kind;
            }
            Some(o) => {
                let first = Decision::from(*o);
                *o = SEE_MANY;
                self.many.insert(k, vec![first, d]);
            }
            None => match d.as_one() {
                Some(o) => {
                    self.one.insert(k, o);
                }
                None => {
                    self.one.insert(k, SEE_MANY);
                    self.many.insert(k, vec![d]);
                }
            },
        }
    }

    /// Removes the decisions of `kind` on `k` (see [`delete_from`]).
    fn delete(&mut self, k: K, kind: Remediation, counts: &mut [u64; 3]) {
        if let Some(list) = self.many.get_mut(&k) {
            delete_from(list, kind, counts);
            self.settle(k);
            return;
        }
        if let Some(o) = self.one.get(&k) {
            if o.kind == kind {
                counts[o.kind.index()] = counts[o.kind.index()].saturating_sub(1);
                self.one.remove(&k);
            }
        }
    }

    /// Moves an address of `many` back to `one` (or out) once a single decision (or none) is
    /// left.
    fn settle(&mut self, k: K) {
        let Some(list) = self.many.get(&k) else {
            return;
        };
        match list.as_slice() {
            [] => {
                self.many.remove(&k);
                self.one.remove(&k);
            }
            [d] => {
                if let Some(o) = d.as_one() {
                    self.many.remove(&k);
                    self.one.insert(k, o);
                }
            }
            _ => {}
        }
    }

    fn has_expired(&self, now: u32) -> bool {
        self.one.values().any(|o| o.until <= now && *o != SEE_MANY)
            || self.many.values().flatten().any(|d| d.until <= now)
    }

    fn expire(&mut self, now: u32, counts: &mut [u64; 3]) {
        self.one.retain(|_, o| {
            if o.until <= now && *o != SEE_MANY {
                counts[o.kind.index()] = counts[o.kind.index()].saturating_sub(1);
                false
            } else {
                true
            }
        });
        let keys: Vec<K> = self
            .many
            .iter_mut()
            .filter_map(|(k, list)| expire_from(list, now, counts).then_some(*k))
            .collect();
        for k in keys {
            self.settle(k);
        }
    }
}

/// Decision counts by kind, for single IPs and for ranges (the decisions gauge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Decisions on single addresses, indexed by [`Remediation`] (ban, other, captcha).
    pub ip: [u64; 3],
    /// Decisions on ranges, indexed the same way.
    pub range: [u64; 3],
}

impl Counts {
    /// `(type, scope, count)` rows for the metrics gauge.
    pub fn rows(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        Remediation::ALL.into_iter().flat_map(move |k| {
            [
                (k.as_str(), "ip", self.ip[k.index()]),
                (k.as_str(), "range", self.range[k.index()]),
            ]
        })
    }

    /// Every decision, of every remediation and scope.
    pub fn total(&self) -> u64 {
        self.ip.iter().chain(&self.range).sum()
    }
}

/// The decisions the gate enforces: an immutable value, replaced whole by each sync (see the
/// module's invariants). Cloning shares every shard.
#[derive(Clone)]
pub struct DecisionTable {
    v4: Box<[Arc<Shard<u32>>]>,
    v6: Box<[Arc<Shard<u128>>]>,
    ranges: Arc<Ranges>,
    counts: Counts,
}

impl Default for DecisionTable {
    fn default() -> Self {
        let hasher = foldhash::fast::RandomState::default();
        Self {
            v4: (0..SHARDS).map(|_| Arc::new(Shard::new(hasher))).collect(),
            v6: (0..SHARDS).map(|_| Arc::new(Shard::new(hasher))).collect(),
            ranges: Arc::default(),
            counts: Counts::default(),
        }
    }
}

fn shard_v4(k: u32) -> usize {
    (k.wrapping_mul(0x9E37_79B9) >> 24) as usize
}

fn shard_v6(k: u128) -> usize {
    let folded = (k as u64) ^ ((k >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

impl DecisionTable {
    /// A table holding exactly the decisions of a startup stream.
    pub fn from_startup(delta: &Delta) -> Self {
        let mut t = Self::default();
        // Size each shard once: rehashing while a million entries arrive would leave freed
        // tables behind in the allocator.
        let mut v4 = vec![0usize; SHARDS];
        let mut v6 = vec![0usize; SHARDS];
        for op in &delta.new {
            match op.target {
                Target::Ip(IpAddr::V4(a)) => v4[shard_v4(u32::from(a))] += 1,
                Target::Ip(IpAddr::V6(a)) => v6[shard_v6(u128::from(a))] += 1,
                Target::Range(_) => {}
            }
        }
        for (shard, n) in t.v4.iter_mut().zip(v4) {
            Arc::make_mut(shard).one.reserve(n);
        }
        for (shard, n) in t.v6.iter_mut().zip(v6) {
            Arc::make_mut(shard).one.reserve(n);
        }
        t.apply_in_place(delta);
        t
    }

    /// The strongest live decision covering `ip` at `now` (Unix seconds). `ip` must be canonical.
    #[inline]
    pub fn lookup(&self, ip: IpAddr, now: u32) -> Option<Remediation> {
        let single = match ip {
            IpAddr::V4(a) => {
                let k = u32::from(a);
                self.v4[shard_v4(k)].lookup(&k, now)
            }
            IpAddr::V6(a) => {
                let k = u128::from(a);
                self.v6[shard_v6(k)].lookup(&k, now)
            }
        };
        let range = self.ranges.lookup(ip).and_then(|s| s.kind(now));
        match (single, range) {
            (Some(a), Some(b)) => strongest([a, b].into_iter()),
            (a, b) => a.or(b),
        }
    }

    /// Decision counts by remediation and scope.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// A new table with `delta` applied; `self` is untouched, and shards the delta does not
    /// touch are shared between the two.
    pub fn apply(&self, delta: &Delta) -> Self {
        let mut t = self.clone();
        t.apply_in_place(delta);
        t
    }

    /// A new table with the part `part` of `parts` of `delta` applied: the ops on single
    /// addresses whose shard falls in that part (ranges go with part 0). Applying every part in
    /// turn equals [`DecisionTable::apply`]; swapping each step in as it is made means a delta
    /// that touches every shard copies an eighth of the table at a time, not all of it, while
    /// each address still moves from its old state to its new one in a single step.
    pub fn apply_part(&self, delta: &Delta, part: usize, parts: usize) -> Self {
        let mut t = self.clone();
        t.apply_filtered(delta, Some((part, parts.max(1))));
        t
    }

    fn apply_in_place(&mut self, delta: &Delta) {
        self.apply_filtered(delta, None);
    }

    fn apply_filtered(&mut self, delta: &Delta, part: Option<(usize, usize)>) {
        let in_part = |shard: Option<usize>| match (part, shard) {
            (None, _) => true,
            (Some((p, _)), None) => p == 0,
            (Some((p, n)), Some(s)) => s * n / SHARDS == p,
        };
        let mut ranges: Option<Ranges> = None;
        for (op, add) in delta
            .deleted
            .iter()
            .map(|op| (op, false))
            .chain(delta.new.iter().map(|op| (op, true)))
        {
            let d = Decision {
                id: op.id,
                until: op.until,
                kind: op.kind,
            };
            match op.target {
                Target::Ip(IpAddr::V4(a)) => {
                    let k = u32::from(a);
                    let s = shard_v4(k);
                    if !in_part(Some(s)) {
                        continue;
                    }
                    let shard = Arc::make_mut(&mut self.v4[s]);
                    if add {
                        shard.add(k, d, &mut self.counts.ip);
                    } else {
                        shard.delete(k, op.kind, &mut self.counts.ip);
                    }
                }
                Target::Ip(IpAddr::V6(a)) => {
                    let k = u128::from(a);
                    let s = shard_v6(k);
                    if !in_part(Some(s)) {
                        continue;
                    }
                    let shard = Arc::make_mut(&mut self.v6[s]);
                    if add {
                        shard.add(k, d, &mut self.counts.ip);
                    } else {
                        shard.delete(k, op.kind, &mut self.counts.ip);
                    }
                }
                Target::Range(_) if !in_part(None) => continue,
                Target::Range(net) => {
                    let r = ranges.get_or_insert_with(|| (*self.ranges).clone());
                    let net = net.trunc();
                    if add {
                        add_to(r.source.entry(net).or_default(), d, &mut self.counts.range);
                    } else if let Some(list) = r.source.get_mut(&net) {
                        delete_from(list, op.kind, &mut self.counts.range);
                        if list.is_empty() {
                            r.source.remove(&net);
                        }
                    }
                }
            }
        }
        if let Some(mut r) = ranges {
            r.rebuild();
            self.ranges = Arc::new(r);
        }
    }

    /// Drops every decision that has expired at `now`; `None` when nothing expired (the common
    /// case), so an unchanged table is not copied.
    pub fn sweep(&self, now: u32) -> Option<Self> {
        let mut t = self.clone();
        let mut changed = false;
        for shard in t.v4.iter_mut() {
            if shard.has_expired(now) {
                Arc::make_mut(shard).expire(now, &mut t.counts.ip);
                changed = true;
            }
        }
        for shard in t.v6.iter_mut() {
            if shard.has_expired(now) {
                Arc::make_mut(shard).expire(now, &mut t.counts.ip);
                changed = true;
            }
        }
        if t.ranges.source.values().flatten().any(|d| d.until <= now) {
            let r = Arc::make_mut(&mut t.ranges);
            r.source.retain(|_, list| {
                !(expire_from(list, now, &mut t.counts.range) && list.is_empty())
            });
            r.rebuild();
            changed = true;
        }
        changed.then_some(t)
    }
}

mod ranges;

use ranges::Ranges;

#[cfg(test)]
mod tests;

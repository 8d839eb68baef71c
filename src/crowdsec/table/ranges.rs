//! Decisions on ranges: kept by range, and flattened into sorted segments (CIDRs nest or are
//! disjoint), each holding the latest expiry per kind of every range covering it, so a lookup
//! is one binary search.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{slots_of, Decision, Slots};

#[derive(Clone, Default)]
pub(super) struct Ranges {
    /// Every decision on a range, by range (host bits cleared).
    pub(super) source: HashMap<IpNet, Vec<Decision>>,
    /// The ranges flattened into segments, each with the latest expiry per kind of every
    /// decision covering it.
    pub(super) v4: Vec<(u32, Slots)>,
    pub(super) v6: Vec<(u128, Slots)>,
}

/// An address family as an ordered integer, for flattening nested ranges.
trait Addr: Copy + Ord + Default {
    fn succ(self) -> Option<Self>;
}

impl Addr for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Addr for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Ranges {
    /// Flattens `source` again into the segment lists.
    pub(super) fn rebuild(&mut self) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (net, decisions) in &self.source {
            let slots = slots_of(decisions);
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), slots)),
                IpNet::V6(n) => {
                    v6.push((u128::from(n.network()), u128::from(n.broadcast()), slots))
                }
            }
        }
        self.v4 = flatten(v4);
        self.v6 = flatten(v6);
    }

    /// The merged slots of every range covering `ip`, if any.
    #[inline]
    pub(super) fn lookup(&self, ip: IpAddr) -> Option<Slots> {
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }
}

#[inline]
fn find<A: Addr>(segments: &[(A, Slots)], ip: A) -> Option<Slots> {
    if segments.is_empty() {
        return None;
    }
    let idx = segments.partition_point(|(start, _)| *start <= ip);
    let slots = segments.get(idx.checked_sub(1)?)?.1;
    (!slots.is_empty()).then_some(slots)
}

/// Turns nested-or-disjoint ranges `(first, last, slots)` into sorted segment starts, each
/// holding the merged slots of every range covering it (empty slots for gaps).
fn flatten<A: Addr>(mut ranges: Vec<(A, A, Slots)>) -> Vec<(A, Slots)> {
    // Start ascending; at equal starts the wider range first, so it is the parent on the stack.
    ranges.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(A, Slots)> = Vec::with_capacity(ranges.len() * 2);
    let mut stack: Vec<(A, Slots)> = Vec::new();
    fn emit<A: Addr>(out: &mut Vec<(A, Slots)>, at: A, slots: Slots) {
        if let Some(last) = out.last_mut() {
            if last.0 == at {
                last.1 = slots;
                return;
            }
            if last.1 == slots {
                return;
            }
        }
        out.push((at, slots));
    }
    fn close<A: Addr>(out: &mut Vec<(A, Slots)>, stack: &mut Vec<(A, Slots)>) {
        if let Some((end, _)) = stack.pop() {
            let below = stack.last().map(|t| t.1).unwrap_or_default();
            if let Some(next) = end.succ() {
                emit(out, next, below);
            }
        }
    }
    for (first, last, slots) in ranges {
        while stack.last().is_some_and(|&(end, _)| end < first) {
            close(&mut out, &mut stack);
        }
        let merged = stack.last().map_or(slots, |t| t.1.max(slots));
        emit(&mut out, first, merged);
        stack.push((last, merged));
    }
    while !stack.is_empty() {
        close(&mut out, &mut stack);
    }
    out
}

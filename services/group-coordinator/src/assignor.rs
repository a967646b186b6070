//! Assignors: which member of a group should hold which partition.
//!
//! Pure functions of the members (their subscriptions and what they hold now) and the
//! partitions that exist. The coordinator compares the result with what members hold and
//! moves only the partitions whose owner changes, so every assignor is incremental on the
//! wire; `sticky` also keeps the target itself as close as possible to the current one.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub use sluice_core::topic::TopicPartition as Tp;

/// One member, as an assignor sees it.
pub struct MemberSpec<'a> {
    pub id: &'a str,
    /// Orders members (the instance id of a static member, so that its place survives a
    /// restart; the member id otherwise).
    pub sort_key: &'a str,
    pub topics: &'a BTreeSet<String>,
    pub owned: BTreeSet<&'a Tp>,
}

/// The assignors a group may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to members in order (Kafka's RangeAssignor).
    Range,
    /// Every subscribed partition dealt in turn to the members subscribed to it.
    RoundRobin,
    /// Balanced counts (within one) while moving as few partitions as possible (Kafka's
    /// "uniform" server-side assignor).
    Sticky,
}

impl Assignor {
    pub const NAMES: &'static str = "range, round-robin, sticky";

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "sticky" | "uniform" => Some(Self::Sticky),
            "range" => Some(Self::Range),
            "round-robin" | "roundrobin" => Some(Self::RoundRobin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
        }
    }

    /// The target assignment: member id -> partitions. `partitions` gives each existing topic's
    /// partition count; subscribed topics that do not exist are skipped.
    pub fn assign(
        self,
        members: &[MemberSpec<'_>],
        partitions: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut sorted: Vec<&MemberSpec<'_>> = members.iter().collect();
        sorted.sort_by(|a, b| (a.sort_key, a.id).cmp(&(b.sort_key, b.id)));
        let mut out: BTreeMap<String, BTreeSet<Tp>> =
            sorted.iter().map(|m| (m.id.to_string(), BTreeSet::new())).collect();
        match self {
            Self::Range => range(&sorted, partitions, &mut out),
            Self::RoundRobin => round_robin(&sorted, partitions, &mut out),
            Self::Sticky => sticky(&sorted, partitions, &mut out),
        }
        out
    }
}

fn subscribed<'a>(members: &'a [&'a MemberSpec<'a>], topic: &str) -> Vec<&'a MemberSpec<'a>> {
    members.iter().copied().filter(|m| m.topics.contains(topic)).collect()
}

fn range(members: &[&MemberSpec<'_>], partitions: &BTreeMap<String, u32>, out: &mut BTreeMap<String, BTreeSet<Tp>>) {
    for (topic, &n) in partitions {
        let subs = subscribed(members, topic);
        if subs.is_empty() {
            continue;
        }
        let (each, extra) = (n as usize / subs.len(), n as usize % subs.len());
        let mut next = 0u32;
        for (i, m) in subs.iter().enumerate() {
            let take = each + usize::from(i < extra);
            let set = out.entry(m.id.to_string()).or_default();
            for p in next..next + take as u32 {
                set.insert((topic.clone(), p));
            }
            next += take as u32;
        }
    }
}

fn round_robin(
    members: &[&MemberSpec<'_>],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, BTreeSet<Tp>>,
) {
    let mut turn = 0usize;
    for (topic, &n) in partitions {
        for p in 0..n {
            // The next member in the cycle that subscribes to this topic.
            for _ in 0..members.len() {
                let m = members[turn % members.len()];
                turn += 1;
                if m.topics.contains(topic) {
                    out.entry(m.id.to_string()).or_default().insert((topic.clone(), p));
                    break;
                }
            }
        }
    }
}

fn sticky(members: &[&MemberSpec<'_>], partitions: &BTreeMap<String, u32>, out: &mut BTreeMap<String, BTreeSet<Tp>>) {
    if members.is_empty() {
        return;
    }
    let exists = |tp: &Tp| partitions.get(&tp.0).is_some_and(|n| tp.1 < *n);
    let eligible: usize = partitions
        .iter()
        .filter(|(t, _)| members.iter().any(|m| m.topics.contains(*t)))
        .map(|(_, n)| *n as usize)
        .sum();
    // What each member may keep: partitions it holds that still exist, it still subscribes
    // to, and nobody earlier in the order claimed.
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    let mut keep: Vec<(usize, Vec<Tp>)> = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let mine: Vec<Tp> = m
            .owned
            .iter()
            .filter(|tp| exists(tp) && m.topics.contains(&tp.0) && !taken.contains(*tp))
            .map(|tp| (*tp).clone())
            .collect();
        taken.extend(mine.iter().cloned());
        keep.push((i, mine));
    }
    // Quotas: everyone gets the floor, the members holding most get the remainder, so the
    // fewest partitions move.
    let (floor, extra) = (eligible / members.len(), eligible % members.len());
    keep.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let mut quota = vec![0usize; members.len()];
    let mut count = vec![0usize; members.len()];
    let mut assigned: BTreeSet<Tp> = BTreeSet::new();
    for (rank, (i, mine)) in keep.iter().enumerate() {
        quota[*i] = floor + usize::from(rank < extra);
        let set = out.entry(members[*i].id.to_string()).or_default();
        for tp in mine.iter().take(quota[*i]) {
            set.insert(tp.clone());
            assigned.insert(tp.clone());
            count[*i] += 1;
        }
    }
    for (topic, &n) in partitions {
        for p in 0..n {
            let tp = (topic.clone(), p);
            if assigned.contains(&tp) {
                continue;
            }
            let subs = (0..members.len()).filter(|i| members[*i].topics.contains(topic));
            // Below quota first; with mixed subscriptions quotas may not add up, then the
            // least loaded subscriber takes it.
            let best = subs.min_by_key(|i| (count[*i] >= quota[*i], count[*i], *i));
            if let Some(i) = best {
                out.entry(members[i].id.to_string()).or_default().insert(tp.clone());
                count[i] += 1;
                assigned.insert(tp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn owners(a: &BTreeMap<String, BTreeSet<Tp>>) -> BTreeMap<Tp, String> {
        a.iter().flat_map(|(m, s)| s.iter().map(move |tp| (tp.clone(), m.clone()))).collect()
    }

    #[test]
    fn every_assignor_gives_each_partition_to_exactly_one_member() {
        let t = topics(&["a", "b"]);
        let parts: BTreeMap<String, u32> = [("a".to_string(), 7), ("b".to_string(), 3)].into();
        let ids = ["m1", "m2", "m3"];
        let members: Vec<MemberSpec<'_>> =
            ids.iter().map(|id| MemberSpec { id, sort_key: id, topics: &t, owned: BTreeSet::new() }).collect();
        for a in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let out = a.assign(&members, &parts);
            let total: usize = out.values().map(|s| s.len()).sum();
            assert_eq!(total, 10, "{a:?}");
            assert_eq!(owners(&out).len(), 10, "{a:?}: a partition given twice");
            let sizes: Vec<usize> = out.values().map(|s| s.len()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= if a == Assignor::Range { 2 } else { 1 }, "{a:?}: {sizes:?}");
        }
    }

    #[test]
    fn range_gives_contiguous_blocks() {
        let t = topics(&["a"]);
        let parts: BTreeMap<String, u32> = [("a".to_string(), 5)].into();
        let members: Vec<MemberSpec<'_>> =
            ["x", "y"].iter().map(|id| MemberSpec { id, sort_key: id, topics: &t, owned: BTreeSet::new() }).collect();
        let out = Assignor::Range.assign(&members, &parts);
        assert_eq!(out["x"].iter().map(|tp| tp.1).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(out["y"].iter().map(|tp| tp.1).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn sticky_moves_only_what_balance_needs() {
        let t = topics(&["t"]);
        let parts: BTreeMap<String, u32> = [("t".to_string(), 6)].into();
        let owned: Vec<Tp> = (0..6).map(|p| ("t".to_string(), p)).collect();
        let held = |ps: &[usize]| ps.iter().map(|i| &owned[*i]).collect::<BTreeSet<_>>();
        let before = vec![
            MemberSpec { id: "m1", sort_key: "m1", topics: &t, owned: held(&[0, 3]) },
            MemberSpec { id: "m2", sort_key: "m2", topics: &t, owned: held(&[1, 4]) },
            MemberSpec { id: "m3", sort_key: "m3", topics: &t, owned: held(&[2, 5]) },
            MemberSpec { id: "m4", sort_key: "m4", topics: &t, owned: BTreeSet::new() },
        ];
        let out = Assignor::Sticky.assign(&before, &parts);
        let moved: usize = before.iter().map(|m| m.owned.iter().filter(|tp| !out[m.id].contains(**tp)).count()).sum();
        assert_eq!(moved, 1, "{out:?}");
        assert_eq!(out["m4"].len(), 1);
        // A member leaving: its partitions go to the others, nothing else moves.
        let after = vec![
            MemberSpec { id: "m1", sort_key: "m1", topics: &t, owned: held(&[0, 3]) },
            MemberSpec { id: "m2", sort_key: "m2", topics: &t, owned: held(&[1, 4]) },
        ];
        let out = Assignor::Sticky.assign(&after, &parts);
        assert!(out["m1"].is_superset(&held(&[0, 3]).into_iter().cloned().collect()));
        assert!(out["m2"].is_superset(&held(&[1, 4]).into_iter().cloned().collect()));
        assert_eq!(out["m1"].len() + out["m2"].len(), 6);
    }

    #[test]
    fn missing_topics_and_mixed_subscriptions() {
        let ta = topics(&["a", "missing"]);
        let tb = topics(&["b"]);
        let parts: BTreeMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 4)].into();
        let members = vec![
            MemberSpec { id: "x", sort_key: "x", topics: &ta, owned: BTreeSet::new() },
            MemberSpec { id: "y", sort_key: "y", topics: &tb, owned: BTreeSet::new() },
        ];
        for a in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let out = a.assign(&members, &parts);
            assert!(out["x"].iter().all(|tp| tp.0 == "a") && out["x"].len() == 2, "{a:?}: {out:?}");
            assert!(out["y"].iter().all(|tp| tp.0 == "b") && out["y"].len() == 4, "{a:?}: {out:?}");
        }
    }
}

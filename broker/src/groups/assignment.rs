//! Dividing a group's partitions among its members: range, round-robin and sticky.
//!
//! Pure functions of (strategy, subscriptions, partition counts, previous assignment). Every
//! input is a sorted map, so the result depends only on the input's content: the same group
//! state always yields the same assignment. Each partition of a subscribed topic goes to exactly
//! one member subscribed to that topic; every member appears in the result.

use rill_protocol::TopicName;
use rill_protocol::messages::{AssignmentStrategy, TopicPartition};
use std::collections::{BTreeMap, BTreeSet};

pub type MemberId = String;
pub type Subscriptions = BTreeMap<MemberId, BTreeSet<TopicName>>;
pub type Assignment = BTreeMap<MemberId, Vec<TopicPartition>>;

pub fn assign(
    strategy: AssignmentStrategy,
    members: &Subscriptions,
    partitions: &BTreeMap<TopicName, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = members.keys().map(|m| (m.clone(), Vec::new())).collect();
    match strategy {
        AssignmentStrategy::Range => range(members, partitions, &mut out),
        AssignmentStrategy::RoundRobin => round_robin(members, partitions, &mut out),
        AssignmentStrategy::Sticky => sticky(members, partitions, previous, &mut out),
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

fn subscribers<'a>(members: &'a Subscriptions, topic: &TopicName) -> Vec<&'a MemberId> {
    members
        .iter()
        .filter(|(_, topics)| topics.contains(topic))
        .map(|(m, _)| m)
        .collect()
}

/// Partitions of subscribed topics, in (topic, partition) order.
fn all_partitions(
    members: &Subscriptions,
    partitions: &BTreeMap<TopicName, u32>,
) -> Vec<TopicPartition> {
    let subscribed: BTreeSet<&TopicName> = members.values().flatten().collect();
    partitions
        .iter()
        .filter(|(t, _)| subscribed.contains(t))
        .flat_map(|(t, n)| {
            (0..*n).map(|p| TopicPartition {
                topic: t.clone(),
                partition: p,
            })
        })
        .collect()
}

fn range(members: &Subscriptions, partitions: &BTreeMap<TopicName, u32>, out: &mut Assignment) {
    for (topic, &n) in partitions {
        let subs = subscribers(members, topic);
        if subs.is_empty() {
            continue;
        }
        let count = subs.len() as u32;
        let (per, extra) = (n / count, n % count);
        let mut next = 0;
        for (i, member) in subs.into_iter().enumerate() {
            let take = per + u32::from((i as u32) < extra);
            let list = out.entry(member.clone()).or_default();
            list.extend((next..next + take).map(|p| TopicPartition {
                topic: topic.clone(),
                partition: p,
            }));
            next += take;
        }
    }
}

fn round_robin(
    members: &Subscriptions,
    partitions: &BTreeMap<TopicName, u32>,
    out: &mut Assignment,
) {
    let ids: Vec<&MemberId> = members.keys().collect();
    let mut turn = 0;
    for tp in all_partitions(members, partitions) {
        // The next member in turn that subscribes to this partition's topic.
        let Some(k) =
            (0..ids.len()).find(|k| members[ids[(turn + k) % ids.len()]].contains(&tp.topic))
        else {
            continue;
        };
        let chosen = (turn + k) % ids.len();
        out.entry(ids[chosen].clone()).or_default().push(tp);
        turn = chosen + 1;
    }
}

fn sticky(
    members: &Subscriptions,
    partitions: &BTreeMap<TopicName, u32>,
    previous: &Assignment,
    out: &mut Assignment,
) {
    if members.is_empty() {
        return;
    }
    let all: BTreeSet<TopicPartition> = all_partitions(members, partitions).into_iter().collect();
    // What each member may keep: still existing, still subscribed, not claimed twice.
    let mut claimed = BTreeSet::new();
    let mut kept: BTreeMap<&MemberId, Vec<TopicPartition>> = BTreeMap::new();
    for (member, topics) in members {
        let mut mine: Vec<TopicPartition> = previous
            .get(member)
            .into_iter()
            .flatten()
            .filter(|tp| all.contains(*tp) && topics.contains(&tp.topic) && !claimed.contains(*tp))
            .cloned()
            .collect();
        mine.sort();
        claimed.extend(mine.iter().cloned());
        kept.insert(member, mine);
    }
    // Quotas: balanced within one; the extra slots go to whoever already holds the most.
    let (base, extra) = (all.len() / members.len(), all.len() % members.len());
    let mut order: Vec<&MemberId> = members.keys().collect();
    order.sort_by(|a, b| kept[b].len().cmp(&kept[a].len()).then(a.cmp(b)));
    let cap: BTreeMap<&MemberId, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, base + usize::from(i < extra)))
        .collect();
    let mut free: BTreeSet<TopicPartition> = all.clone();
    for (member, mine) in kept.iter_mut() {
        mine.truncate(cap[member]);
        for tp in mine.iter() {
            free.remove(tp);
        }
    }
    for tp in free {
        let subscribed = |m: &&&MemberId| members[**m].contains(&tp.topic);
        let with_room = kept
            .iter()
            .filter(|(m, mine)| subscribed(m) && mine.len() < cap[**m])
            .min_by_key(|(m, mine)| (mine.len(), **m));
        let fallback = || {
            kept.iter()
                .filter(|(m, _)| subscribed(m))
                .min_by_key(|(m, mine)| (mine.len(), **m))
        };
        if let Some(member) = with_room.or_else(fallback).map(|(m, _)| *m) {
            kept.entry(member).or_default().push(tp);
        }
    }
    for (member, mine) in kept {
        out.insert(member.clone(), mine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [AssignmentStrategy; 3] = [
        AssignmentStrategy::Range,
        AssignmentStrategy::RoundRobin,
        AssignmentStrategy::Sticky,
    ];

    fn topic(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    fn group(members: usize, topics: &[&str]) -> Subscriptions {
        (0..members)
            .map(|i| {
                (
                    format!("m{i:02}"),
                    topics.iter().map(|t| topic(t)).collect(),
                )
            })
            .collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<TopicName, u32> {
        list.iter().map(|(t, n)| (topic(t), *n)).collect()
    }

    /// Every partition exactly once, only to subscribers.
    fn assert_valid(a: &Assignment, members: &Subscriptions, parts: &BTreeMap<TopicName, u32>) {
        let mut seen = BTreeSet::new();
        for (m, list) in a {
            for tp in list {
                assert!(
                    members[m].contains(&tp.topic),
                    "{m} got {tp} without subscribing"
                );
                assert!(seen.insert(tp.clone()), "{tp} assigned twice");
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            all_partitions(members, parts)
        );
    }

    fn sizes(a: &Assignment) -> (usize, usize) {
        let s: Vec<usize> = a.values().map(Vec::len).collect();
        (*s.iter().min().unwrap(), *s.iter().max().unwrap())
    }

    proptest! {
        #[test]
        fn every_strategy_is_valid_balanced_and_deterministic(members in 1usize..12, p1 in 0u32..40, p2 in 0u32..40) {
            let subs = group(members, &["a", "b"]);
            let parts = counts(&[("a", p1), ("b", p2)]);
            for strategy in ALL {
                let a = assign(strategy, &subs, &parts, &Assignment::new());
                assert_valid(&a, &subs, &parts);
                prop_assert_eq!(&a, &assign(strategy, &subs, &parts, &Assignment::new()), "{} is not deterministic", strategy);
                let (min, max) = sizes(&a);
                if strategy != AssignmentStrategy::Range {
                    prop_assert!(max - min <= 1, "{}: sizes {}..{}", strategy, min, max);
                }
            }
            // Range balances each topic on its own.
            let single = counts(&[("a", p1)]);
            let (min, max) = sizes(&assign(AssignmentStrategy::Range, &subs, &single, &Assignment::new()));
            prop_assert!(max - min <= 1);
        }

        #[test]
        fn sticky_keeps_survivors_partitions_when_a_member_leaves(members in 2usize..10, parts in 1u32..60, leaver in any::<prop::sample::Index>()) {
            let subs = group(members, &["t"]);
            let counts = counts(&[("t", parts)]);
            let before = assign(AssignmentStrategy::Sticky, &subs, &counts, &Assignment::new());
            let gone = subs.keys().nth(leaver.index(members)).unwrap().clone();
            let mut after_subs = subs.clone();
            after_subs.remove(&gone);
            let after = assign(AssignmentStrategy::Sticky, &after_subs, &counts, &before);
            assert_valid(&after, &after_subs, &counts);
            let (min, max) = sizes(&after);
            prop_assert!(max - min <= 1);
            for (m, list) in &after {
                for tp in &before[m] {
                    prop_assert!(list.contains(tp), "{} lost {} although it stayed", m, tp);
                }
            }
        }

        #[test]
        fn sticky_moves_only_what_balance_requires_when_a_member_joins(members in 1usize..10, parts in 1u32..60) {
            let subs = group(members, &["t"]);
            let counts = counts(&[("t", parts)]);
            let before = assign(AssignmentStrategy::Sticky, &subs, &counts, &Assignment::new());
            let mut more = subs.clone();
            more.insert("zz-new".into(), [topic("t")].into());
            let after = assign(AssignmentStrategy::Sticky, &more, &counts, &before);
            assert_valid(&after, &more, &counts);
            let (min, max) = sizes(&after);
            prop_assert!(max - min <= 1);
            for (m, old) in &before {
                let kept = after[m].iter().filter(|tp| old.contains(tp)).count();
                prop_assert_eq!(kept, after[m].len(), "{} was given a partition it did not have", m);
                prop_assert_eq!(kept, old.len().min(after[m].len()));
            }
        }
    }

    #[test]
    fn range_and_round_robin_match_their_definitions() {
        let subs = group(2, &["a", "b"]);
        let parts = counts(&[("a", 3), ("b", 3)]);
        let tp = |t: &str, p| TopicPartition {
            topic: topic(t),
            partition: p,
        };
        let range = assign(AssignmentStrategy::Range, &subs, &parts, &Assignment::new());
        assert_eq!(
            range["m00"],
            vec![tp("a", 0), tp("a", 1), tp("b", 0), tp("b", 1)]
        );
        assert_eq!(range["m01"], vec![tp("a", 2), tp("b", 2)]);
        let rr = assign(
            AssignmentStrategy::RoundRobin,
            &subs,
            &parts,
            &Assignment::new(),
        );
        assert_eq!(rr["m00"], vec![tp("a", 0), tp("a", 2), tp("b", 1)]);
        assert_eq!(rr["m01"], vec![tp("a", 1), tp("b", 0), tp("b", 2)]);
    }

    #[test]
    fn members_only_get_topics_they_subscribe_to() {
        let mut subs = group(2, &["a"]);
        subs.insert("m99".into(), [topic("b")].into());
        let parts = counts(&[("a", 4), ("b", 2), ("c", 5)]);
        for strategy in ALL {
            let a = assign(strategy, &subs, &parts, &Assignment::new());
            assert_valid(&a, &subs, &parts);
            assert_eq!(a["m99"].len(), 2, "{strategy}");
        }
    }
}

//! Choosing a replica for a request: a tier and a zone by the routing
//! table's shares, then power of two choices over the candidates' loads,
//! passing over replicas the request already tried while others exist.

use super::clock::Moment;
use super::shared::Snapshot;
use super::table::WHOLE;
use crate::attempt::{ReplicaId, Tried};
use crate::rng::{below, next_local};

/// Random draws p2c makes when its first two candidates were not both
/// usable; a list no longer than this is then scanned whole, so an untried
/// replica is never overlooked.
const SLOW_PATH_DRAWS: u32 = 8;

/// One request's choice of a replica: over a snapshot of the members, at
/// one time, passing over the replicas it tried. Pure but for `stale`, and
/// needs no runtime.
pub(super) struct Pick<'a, K, S> {
    pub(super) snapshot: &'a Snapshot<K, S>,
    pub(super) now_ns: u64,
    pub(super) now: Moment,
    pub(super) tried: &'a Tried,
    /// A replica found not ready for this request: passed over like a
    /// tried one.
    pub(super) busy: Option<u32>,
    /// Set when a candidate turned unusable since the routing table was
    /// built: the caller has the table rebuilt.
    pub(super) stale: bool,
}

impl<K, S> Pick<'_, K, S> {
    /// Chooses a replica: a tier and zone by the table's shares, then the
    /// less loaded of two random candidates, avoiding replicas the request
    /// already tried while others exist.
    pub(super) fn choose(&mut self, rng: &mut u64) -> Option<usize> {
        let (snapshot, tried) = (self.snapshot, self.tried);
        let r = next_local(rng);
        let candidates = snapshot.table.pick(
            (r % u64::from(WHOLE)) as u32,
            ((r >> 32) % u64::from(WHOLE)) as u32,
        )?;
        if let Some(i) = self.p2c(candidates, rng, tried) {
            return Some(i);
        }
        if !tried.is_empty() {
            // Every candidate of the chosen tier and zone was tried: a retry
            // or hedge goes to an untried replica elsewhere in the table
            // (another zone, the next tier) while one exists...
            for zone in snapshot.table.tiers.iter().flat_map(|t| &t.zones) {
                if let Some(i) = self.p2c(&zone.candidates, rng, tried) {
                    return Some(i);
                }
            }
            // Then the tiers that take no traffic now, lowest first.
            for tier in snapshot.table.spare.chunk_by(|a, b| {
                snapshot.members[*a as usize].state.tier == snapshot.members[*b as usize].state.tier
            }) {
                if let Some(i) = self.p2c(tier, rng, tried) {
                    return Some(i);
                }
            }
            // ...and only then to one it tried before.
            return self.p2c(candidates, rng, &Tried::default());
        }
        None
    }

    /// Power of two choices among `candidates`: two distinct usable ones,
    /// the cheaper wins. A few more draws if a draw is unusable (it turned
    /// unhealthy since the table was built, or the request tried it).
    fn p2c(&mut self, candidates: &[u32], rng: &mut u64, tried: &Tried) -> Option<usize> {
        let (snapshot, now_ns, now) = (self.snapshot, self.now_ns, self.now);
        let state = |i: u32| &snapshot.members[i as usize].state;
        let busy = self.busy;
        let usable = |i: u32| {
            let member = &snapshot.members[i as usize];
            (snapshot.table.panic || member.state.routable(now))
                && busy != Some(i)
                && (tried.is_empty() || !tried.contains(ReplicaId::of(member)))
        };
        let cheaper = |a: u32, b: u32| {
            let (sa, sb) = (state(a), state(b));
            // A replica that failed lately and has not been tried for a
            // while is probed, penalty or not: without traffic, outlier
            // detection could never see it fail again (and eject it) or
            // succeed (and clear it).
            match (sa.wants_probe(now_ns), sb.wants_probe(now_ns)) {
                (true, false) => return a,
                (false, true) => return b,
                _ => {}
            }
            if sa.preferred_to(sb, now_ns) { a } else { b }
        };
        let n = u32::try_from(candidates.len()).unwrap_or(u32::MAX);
        // Two distinct positions from one draw, without a division, and
        // both candidates read before either is judged: in a large pool
        // their states are two cache misses, and this way they overlap.
        let draw = next_local(rng);
        let p1 = below(draw as u32, n);
        let p2 = if n > 1 {
            other_than(p1, (draw >> 32) as u32, n)
        } else {
            p1
        };
        let (i1, i2) = (*candidates.get(p1 as usize)?, candidates[p2 as usize]);
        match (usable(i1), n > 1 && usable(i2)) {
            (true, true) => return Some(cheaper(i1, i2) as usize),
            (true, false) if n == 1 => return Some(i1 as usize),
            _ => {}
        }
        if tried.is_empty() && busy.is_none() {
            // A candidate turned unusable since the table was built.
            self.stale = true;
        }
        // The slow path: more draws, then (for small lists) a full scan,
        // so an untried replica is never overlooked.
        let mut first: Option<(u32, u32)> =
            [(p1, i1), (p2, i2)].into_iter().find(|&(_, i)| usable(i));
        let draws = if n <= SLOW_PATH_DRAWS {
            SLOW_PATH_DRAWS + n
        } else {
            SLOW_PATH_DRAWS
        };
        for attempt in 0..draws {
            let pos = if attempt >= SLOW_PATH_DRAWS {
                // The full scan of a short list, position by position.
                attempt - SLOW_PATH_DRAWS
            } else {
                let draw = next_local(rng) as u32;
                match first {
                    Some((p, _)) if n > 1 => other_than(p, draw, n),
                    _ => below(draw, n),
                }
            };
            let i = candidates[pos as usize];
            if !usable(i) {
                continue;
            }
            match first {
                None => {
                    first = Some((pos, i));
                    if n == 1 {
                        break;
                    }
                }
                Some((_, f)) if f != i => return Some(cheaper(f, i) as usize),
                Some(_) => {}
            }
        }
        first.map(|(_, i)| i as usize)
    }
}

/// A uniform position below `n` (at least 2) other than `p`, from 32
/// random bits, without a division.
#[inline]
fn other_than(p: u32, bits: u32, n: u32) -> u32 {
    let q = p + 1 + below(bits, n - 1);
    if q >= n { q - n } else { q }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use std::sync::{Arc, Weak};

    use super::*;
    use crate::pool::replica::ReplicaState;
    use crate::pool::shared::Member;
    use crate::pool::standing::Standing;
    use crate::pool::table::{Row, Table};

    /// A snapshot of `n` healthy replicas of one tier, with no service.
    fn snapshot(n: usize) -> Snapshot<usize, ()> {
        let members: Vec<Arc<Member<usize, ()>>> = (0..n)
            .map(|id| {
                let label: Arc<str> = Arc::from(id.to_string());
                Arc::new(Member {
                    state: ReplicaState::new(&Arc::from("p"), label, 0, None, 1, None, None, 10),
                    service: (),
                    id,
                    pool: Weak::new(),
                    erased: Weak::<Member<usize, ()>>::new(),
                })
            })
            .collect();
        let rows: Vec<Row<'_>> = (0..n)
            .map(|_| Row {
                tier: 0,
                zone: None,
                standing: Standing::Eligible,
            })
            .collect();
        let table = Table::build(&rows, None, 1.4, 0.5);
        Snapshot::new(members, table, 1)
    }

    fn pick<'a>(snapshot: &'a Snapshot<usize, ()>, tried: &'a Tried) -> Pick<'a, usize, ()> {
        Pick {
            snapshot,
            now_ns: 1,
            now: Moment::at(1),
            tried,
            busy: None,
            stale: false,
        }
    }

    #[test]
    fn every_replica_is_chosen_among_equals() {
        let snapshot = snapshot(3);
        let tried = Tried::default();
        let mut rng = 7;
        let mut seen = [0; 3];
        for _ in 0..300 {
            let i = pick(&snapshot, &tried).choose(&mut rng).unwrap();
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn a_replica_tried_is_passed_over_while_another_exists() {
        let snapshot = snapshot(3);
        let mut rng = 11;
        let mut tried = Tried::default();
        tried.record(ReplicaId::of(&snapshot.members[0]));
        for _ in 0..100 {
            let i = pick(&snapshot, &tried).choose(&mut rng).unwrap();
            assert_ne!(i, 0, "an untried replica exists");
        }
        // Every one tried: the retry goes to one it tried before.
        let mut all = Tried::default();
        for m in snapshot.members.iter() {
            all.record(ReplicaId::of(m));
        }
        assert!(pick(&snapshot, &all).choose(&mut rng).is_some());
    }

    #[test]
    fn a_replica_that_turned_unusable_marks_the_table_stale() {
        let snapshot = snapshot(2);
        snapshot.members[1].state.admin.store(
            crate::pool::replica::Admin::Disabled,
            crate::sync::Ordering::Release,
        );
        let tried = Tried::default();
        let mut rng = 3;
        let mut stale = false;
        for _ in 0..20 {
            let mut p = pick(&snapshot, &tried);
            assert_eq!(p.choose(&mut rng), Some(0));
            stale |= p.stale;
        }
        assert!(stale, "the table still lists the disabled replica");
    }
}

//! The routing table: which tiers and zones take what share of traffic,
//! and which replicas are candidates there (private, runtime-free).
//!
//! Rebuilt from the replicas' standings when health changes (and at least
//! every 100 ms, or when an ejection or pushback ends); the request path
//! only reads it.

use super::clock::Moment;
use super::standing::Standing;

/// Shares are parts per million.
pub(super) const WHOLE: u32 = 1_000_000;

/// One replica as the table builder sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row<'a> {
    pub(super) tier: u32,
    pub(super) zone: Option<&'a str>,
    pub(super) standing: Standing,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Table {
    /// Tiers that take traffic, with cumulative shares ending at [`WHOLE`].
    pub(super) tiers: Vec<Route>,
    /// Everything is spread over all enabled replicas: too few are healthy.
    pub(super) panic: bool,
    /// The soonest a replica's standing changes by itself.
    pub(super) next_change: Option<Moment>,
    /// Every replica that may take traffic, in every tier (ordered by
    /// tier): where a retry goes when the routes hold only tried replicas.
    pub(super) spare: Vec<u32>,
}

/// A tier: its cumulative share, and its zones.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Route {
    pub(super) until: u32,
    pub(super) zones: Vec<Zone>,
}

/// A zone (or the remote zones together): cumulative share within the
/// tier, and the candidate replicas (indices into the member list).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Zone {
    pub(super) until: u32,
    pub(super) candidates: Vec<u32>,
}

fn enabled(s: Standing) -> bool {
    !matches!(s, Standing::Draining | Standing::Disabled)
}

/// Counts toward its tier's (or zone's) healthy capacity.
fn healthy(s: Standing) -> bool {
    matches!(s, Standing::Eligible)
}

/// May take traffic where its tier takes traffic anyway: a recovering
/// replica does not pull traffic back from a lower tier (it does not count
/// as capacity), but it serves within its own tier at once.
fn candidate(s: Standing) -> bool {
    matches!(s, Standing::Eligible | Standing::Recovering(_))
}

/// `min(1, healthy / total × overprovisioning)`.
fn health(healthy: usize, total: usize, overprovisioning: f64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (healthy as f64 / total as f64 * overprovisioning).min(1.0)
    }
}

impl Table {
    /// Builds the table for `rows` (indexed as the member list).
    pub(super) fn build(
        rows: &[Row<'_>],
        local_zone: Option<&str>,
        overprovisioning: f64,
        panic_threshold: f64,
    ) -> Self {
        let next_change = rows
            .iter()
            .filter_map(|r| match r.standing {
                Standing::Recovering(t) | Standing::Ejected(t) | Standing::Avoided(t) => Some(t),
                _ => None,
            })
            .min();
        let mut spare: Vec<u32> = (0..rows.len() as u32)
            .filter(|&i| candidate(rows[i as usize].standing))
            .collect();
        spare.sort_by_key(|&i| rows[i as usize].tier);
        let mut tiers: Vec<u32> = rows
            .iter()
            .filter(|r| enabled(r.standing))
            .map(|r| r.tier)
            .collect();
        tiers.sort_unstable();
        tiers.dedup();

        // Each tier's health, as Envoy computes priority load.
        let healths: Vec<f64> = tiers
            .iter()
            .map(|&t| {
                let (h, n) = rows
                    .iter()
                    .filter(|r| r.tier == t && enabled(r.standing))
                    .fold((0, 0), |(h, n), r| {
                        (h + usize::from(healthy(r.standing)), n + 1)
                    });
                health(h, n, overprovisioning)
            })
            .collect();
        let total: f64 = healths.iter().sum::<f64>().min(1.0);

        if total < panic_threshold {
            // Panic: spread over every enabled replica, healthy or not,
            // rather than crush the few (or none) that are healthy.
            let all: Vec<u32> = (0..rows.len() as u32)
                .filter(|&i| enabled(rows[i as usize].standing))
                .collect();
            let tiers = if all.is_empty() {
                Vec::new()
            } else {
                vec![Route {
                    until: WHOLE,
                    zones: vec![Zone {
                        until: WHOLE,
                        candidates: all,
                    }],
                }]
            };
            return Self {
                tiers,
                panic: true,
                next_change,
                spare,
            };
        }

        if total == 0.0 {
            return Self {
                tiers: Vec::new(),
                panic: false,
                next_change,
                spare,
            };
        }
        // Lower tiers first; each takes what its health covers of what is
        // left; the shares are then scaled to the whole.
        let mut left = 1.0;
        let mut routes = Vec::new();
        let mut cumulative = 0.0;
        for (&tier, &h) in tiers.iter().zip(&healths) {
            let load = h.min(left);
            left -= load;
            if load <= 0.0 {
                continue;
            }
            cumulative += load / total;
            let zones = Self::zones(rows, tier, local_zone, overprovisioning);
            if zones.is_empty() {
                continue;
            }
            routes.push(Route {
                until: ((cumulative * f64::from(WHOLE)).round() as u32).min(WHOLE),
                zones,
            });
        }
        if let Some(last) = routes.last_mut() {
            last.until = WHOLE;
        }
        Self {
            tiers: routes,
            panic: false,
            next_change,
            spare,
        }
    }

    /// The zones of `tier`: the local zone takes what its health covers
    /// (with overprovisioning), the others the rest.
    fn zones(
        rows: &[Row<'_>],
        tier: u32,
        local_zone: Option<&str>,
        overprovisioning: f64,
    ) -> Vec<Zone> {
        let in_tier = || (0..rows.len() as u32).filter(move |&i| rows[i as usize].tier == tier);
        let is_local = |i: u32| local_zone.is_some() && rows[i as usize].zone == local_zone;
        let local: Vec<u32> = in_tier()
            .filter(|&i| is_local(i) && candidate(rows[i as usize].standing))
            .collect();
        let remote: Vec<u32> = in_tier()
            .filter(|&i| !is_local(i) && candidate(rows[i as usize].standing))
            .collect();
        let local_total = in_tier()
            .filter(|&i| is_local(i) && enabled(rows[i as usize].standing))
            .count();
        let local_healthy = in_tier()
            .filter(|&i| is_local(i) && healthy(rows[i as usize].standing))
            .count();
        let local_share = health(local_healthy, local_total, overprovisioning);
        if local_healthy == 0 && !remote.is_empty() {
            // No healthy capacity at home: the remote zones take it all.
            return vec![Zone {
                until: WHOLE,
                candidates: remote,
            }];
        }
        match (local.is_empty(), remote.is_empty()) {
            (true, true) => Vec::new(),
            (false, true) => vec![Zone {
                until: WHOLE,
                candidates: local,
            }],
            (true, false) => vec![Zone {
                until: WHOLE,
                candidates: remote,
            }],
            (false, false) if local_share >= 1.0 => vec![Zone {
                until: WHOLE,
                candidates: local,
            }],
            (false, false) => vec![
                Zone {
                    until: (local_share * f64::from(WHOLE)).round() as u32,
                    candidates: local,
                },
                Zone {
                    until: WHOLE,
                    candidates: remote,
                },
            ],
        }
    }

    /// The candidates for a request, from two uniform random numbers.
    pub(super) fn pick(&self, r_tier: u32, r_zone: u32) -> Option<&[u32]> {
        let tier = self.tiers.iter().find(|t| r_tier % WHOLE < t.until)?;
        let zone = tier.zones.iter().find(|z| r_zone % WHOLE < z.until)?;
        Some(&zone.candidates)
    }

    /// The share of traffic (0..=1) tier index `i` of the table takes.
    #[cfg(test)]
    fn tier_share(&self, i: usize) -> f64 {
        let start = if i == 0 { 0 } else { self.tiers[i - 1].until };
        f64::from(self.tiers[i].until - start) / f64::from(WHOLE)
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    fn rows(spec: &[(u32, &'static str, Standing)]) -> Vec<Row<'static>> {
        spec.iter()
            .map(|&(tier, zone, standing)| Row {
                tier,
                zone: Some(zone),
                standing,
            })
            .collect()
    }

    const OK: Standing = Standing::Eligible;
    const DOWN: Standing = Standing::Ejected(Moment::at(1_000));

    #[test]
    fn a_primary_60_percent_healthy_keeps_84_percent_of_the_traffic() {
        // 5 primaries, 3 healthy (60%) x 1.4 = 84%; the standby takes 16%.
        let mut spec = vec![
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", DOWN),
            (0, "a", DOWN),
        ];
        spec.extend([(1, "a", OK), (1, "a", OK)]);
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        assert!(!t.panic);
        assert_eq!(t.tiers.len(), 2);
        assert!((t.tier_share(0) - 0.84).abs() < 1e-6, "{}", t.tier_share(0));
        assert!((t.tier_share(1) - 0.16).abs() < 1e-6);
        assert_eq!(t.tiers[0].zones[0].candidates, [0, 1, 2]);
        assert_eq!(t.tiers[1].zones[0].candidates, [5, 6]);
        assert_eq!(t.next_change, Some(Moment::at(1_000)));
    }

    #[test]
    fn a_mostly_healthy_primary_takes_everything() {
        // 4 of 5 healthy: 80% x 1.4 > 100%.
        let spec = [
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", DOWN),
            (1, "a", OK),
        ];
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        assert_eq!(t.tiers.len(), 1);
        assert_eq!(t.tiers[0].until, WHOLE);
    }

    #[test]
    fn a_dead_primary_sends_everything_to_the_standby() {
        let spec = [(0, "a", DOWN), (0, "a", DOWN), (1, "a", OK), (1, "a", OK)];
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        assert!(!t.panic);
        assert_eq!(t.tiers.len(), 1);
        assert_eq!(t.tiers[0].zones[0].candidates, [2, 3]);
    }

    #[test]
    fn recovering_replicas_wait_out_the_hysteresis() {
        let spec = [
            (0, "a", Standing::Recovering(Moment::at(500))),
            (0, "a", Standing::Recovering(Moment::at(500))),
            (1, "a", OK),
            (1, "a", OK),
        ];
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        assert_eq!(
            t.tiers[0].zones[0].candidates,
            [2, 3],
            "the standby keeps the traffic"
        );
        assert_eq!(t.next_change, Some(Moment::at(500)));
    }

    #[test]
    fn below_the_panic_threshold_traffic_spreads_over_all() {
        // 1 of 5 healthy: 20% x 1.4 = 28% < 50%.
        let spec = [
            (0, "a", OK),
            (0, "a", DOWN),
            (0, "a", DOWN),
            (0, "a", DOWN),
            (0, "a", DOWN),
            (0, "a", Standing::Disabled),
        ];
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        assert!(t.panic);
        assert_eq!(
            t.tiers[0].zones[0].candidates,
            [0, 1, 2, 3, 4],
            "disabled replicas stay out"
        );
        // With the threshold at zero, the one healthy replica takes it all.
        let t = Table::build(&rows(&spec), None, 1.4, 0.0);
        assert!(!t.panic);
        assert_eq!(t.tiers[0].zones[0].candidates, [0]);
    }

    #[test]
    fn nothing_enabled_means_no_route() {
        let spec = [(0, "a", Standing::Disabled), (0, "a", Standing::Draining)];
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        assert!(t.tiers.is_empty());
        assert_eq!(t.pick(1, 1), None);
    }

    #[test]
    fn the_local_zone_is_preferred_and_spills_when_short() {
        let spec = [(0, "a", OK), (0, "a", OK), (0, "b", OK), (0, "b", OK)];
        let t = Table::build(&rows(&spec), Some("a"), 1.4, 0.5);
        assert_eq!(t.tiers[0].zones.len(), 1);
        assert_eq!(t.tiers[0].zones[0].candidates, [0, 1]);
        // Half the local zone down: 50% x 1.4 = 70% stays local, 30% spills.
        let spec = [(0, "a", OK), (0, "a", DOWN), (0, "b", OK), (0, "b", OK)];
        let t = Table::build(&rows(&spec), Some("a"), 1.4, 0.5);
        let zones = &t.tiers[0].zones;
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[0].until, 700_000);
        assert_eq!(zones[0].candidates, [0]);
        assert_eq!(zones[1].candidates, [2, 3]);
        // The whole local zone down: everything spills.
        let spec = [(0, "a", DOWN), (0, "a", DOWN), (0, "b", OK), (0, "b", OK)];
        let t = Table::build(&rows(&spec), Some("a"), 1.4, 0.0);
        assert_eq!(
            t.tiers[0].zones,
            [Zone {
                until: WHOLE,
                candidates: vec![2, 3]
            }]
        );
    }

    #[test]
    fn picks_follow_the_shares() {
        let mut spec = vec![
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", OK),
            (0, "a", DOWN),
            (0, "a", DOWN),
        ];
        spec.extend([(1, "a", OK)]);
        let t = Table::build(&rows(&spec), None, 1.4, 0.5);
        let mut standby = 0;
        for r in (0..WHOLE).step_by(1_000) {
            if t.pick(r, 0).unwrap() == [5] {
                standby += 1;
            }
        }
        assert_eq!(standby, 160, "16% of 1,000 evenly spread draws");
    }
}

//! The forward pass ([`super::Options::forward`]) and its nested solve of attention heads.

use super::engine::Engine;
use super::gather::Index;
use super::products::Product;
use crate::error::MatchError;
use crate::lap::{self, LapSolution};
use rayon::prelude::*;

/// Largest merged (heads x within-head) axis solved nested: its cost matrix is this squared.
const NESTED_MAX: usize = 8192;

/// A group's members whose inner axis belongs to another group: `(parameter, axis, inner group)`.
type Inner = Vec<(usize, usize, usize)>;

impl Engine<'_> {
    /// The members of group `g` whose other permuted axes all belong to groups in `done`.
    fn ready_members(&self, g: usize, done: &[bool]) -> Vec<(usize, usize)> {
        self.lay.groups[g]
            .members
            .iter()
            .copied()
            .filter(|&(p, ax)| {
                self.lay.axis_group[p]
                    .iter()
                    .enumerate()
                    .all(|(k, h)| k == ax || h.is_none_or(|h| done[h]))
            })
            .collect()
    }

    /// For group `g`: its members `(p, k)` whose axis `k + 1` belongs to another group and whose
    /// other axes are settled (`inner`: `(p, k, inner group)`), and its other ready members
    /// (`outer`). Empty `inner` when there is no such member or the merged cost would be large.
    fn nested_ready(&self, g: usize, done: &[bool]) -> (Inner, Vec<(usize, usize)>) {
        let mut inner = Vec::new();
        let mut outer = Vec::new();
        let n = self.lay.groups[g].size;
        for &(p, k) in &self.lay.groups[g].members {
            let ag = &self.lay.axis_group[p];
            let next = ag
                .get(k + 1)
                .copied()
                .flatten()
                .filter(|&w| w != g && !done[w] && self.is_inner(g, w));
            let settled = |skip: Option<usize>| {
                ag.iter()
                    .enumerate()
                    .all(|(j, h)| j == k || Some(j) == skip || h.is_none_or(|h| done[h]))
            };
            match next {
                Some(w) if settled(Some(k + 1)) && n * self.lay.groups[w].size <= NESTED_MAX => {
                    inner.push((p, k, w))
                }
                _ if settled(None) => outer.push((p, k)),
                _ => {}
            }
        }
        (inner, outer)
    }

    /// Whether group `g` has a member whose next axis belongs to a group inside it not solved
    /// yet, small enough to be solved nested: heads waiting for their projections to be settled.
    fn awaits_inner(&self, g: usize, done: &[bool]) -> bool {
        let n = self.lay.groups[g].size;
        self.lay.groups[g].members.iter().any(|&(p, k)| {
            self.lay.axis_group[p]
                .get(k + 1)
                .copied()
                .flatten()
                .is_some_and(|w| {
                    w != g
                        && !done[w]
                        && n * self.lay.groups[w].size <= NESTED_MAX
                        && self.is_inner(g, w)
                })
        })
    }

    /// Whether group `w` lies inside group `g` (units within a head, channels within a group of
    /// a grouped convolution): every member of `w` has an axis of `g` before its own. A residual
    /// stream read by a projection of heads, (out, heads, head_dim), is not inside its heads: the
    /// stream is also read without them.
    fn is_inner(&self, g: usize, w: usize) -> bool {
        self.lay.groups[w]
            .members
            .iter()
            .all(|&(p, j)| self.lay.axis_group[p][..j].contains(&Some(g)))
    }

    /// The head assignment of [`forward_pass`]'s nested solve (see there).
    fn nested_solve(
        &mut self,
        g: usize,
        inner: &[(usize, usize, usize)],
        outer: &[(usize, usize)],
    ) -> Result<Vec<usize>, MatchError> {
        let n = self.lay.groups[g].size;
        let mut head = vec![0.0f32; n * n];
        self.add_cost(g, outer, &mut head)?;
        let mut ws: Vec<usize> = inner.iter().map(|&(_, _, w)| w).collect();
        ws.sort_unstable();
        ws.dedup();
        for w in ws {
            let m = self.lay.groups[w].size;
            let nm = n * m;
            let members: Vec<(usize, usize)> = inner
                .iter()
                .filter(|&&(_, _, x)| x == w)
                .map(|&(p, k, _)| (p, k))
                .collect();
            let merged = self.merged_cost(nm, &members)?;
            // The best within-head value of every pair of heads: n^2 independent assignments of
            // size m, solved across the pool's threads (one block buffer per task); each result
            // is the same whichever thread solves it.
            let best = self.clock.lap.time(|| {
                (0..n * n)
                    .into_par_iter()
                    .map_init(
                        || vec![0.0f32; m * m],
                        |block, ij| {
                            let (i, j) = (ij / n, ij % n);
                            for r in 0..m {
                                let row = (i * m + r) * nm + j * m;
                                block[r * m..(r + 1) * m].copy_from_slice(&merged[row..row + m]);
                            }
                            lap::solve(block, m, m, true, None).map(|s| s.objective)
                        },
                    )
                    .collect::<Result<Vec<f64>, _>>()
            });
            let best = best.map_err(|source| MatchError::Assignment {
                group: self.lay.group_name(w),
                source,
            })?;
            for (h, v) in head.iter_mut().zip(best) {
                *h += v as f32;
            }
        }
        Ok(self.assign(g, &head, n, None)?.col_ind)
    }

    /// The `nm x nm` cost of the merged axes `k, k + 1` (heads x within-head units) of the given
    /// members `(p, k)`, B's other permuted axes read through their permutations.
    fn merged_cost(&self, nm: usize, members: &[(usize, usize)]) -> Result<Vec<f32>, MatchError> {
        let mut merged = vec![0.0f32; nm * nm];
        // Each parameter with its axes k and k + 1 merged (a view of the same data).
        let shapes: Vec<Vec<usize>> = members
            .iter()
            .map(|&(p, k)| {
                let mut shape = self.lay.a[p].shape.to_vec();
                shape[k] *= shape[k + 1];
                shape.remove(k + 1);
                shape
            })
            .collect();
        let requests: Vec<Product<'_>> = members
            .iter()
            .zip(&shapes)
            .map(|(&(p, k), shape)| {
                let b = shape
                    .iter()
                    .enumerate()
                    .map(|(j, &d)| {
                        let src = if j > k { j + 1 } else { j };
                        match self.lay.axis_group[p][src] {
                            Some(h) if j != k => Index::Map(&self.perms[h]),
                            _ => Index::All(d),
                        }
                    })
                    .collect();
                Product {
                    param: p,
                    shape,
                    axis: k,
                    a: shape.iter().map(|&d| Index::All(d)).collect(),
                    b,
                    b_old: None,
                }
            })
            .collect();
        self.add_products(nm, &requests, &mut merged)?;
        Ok(merged)
    }
}

/// [`super::Options::forward`]: each group once, in order, from the cost of its ready members; a
/// group with none yet waits for the next one that has some, and when none has, the first waiting
/// group uses all its members. The partial costs are kept (the groups their members read are
/// settled before them and do not move again in the pass); the sweeps add the missing members.
///
/// A group whose members are followed, in some parameter, by the axis of another group (the heads
/// of an attention layer followed by the units within a head) is solved *nested* when those
/// members are ready apart from that inner axis: for every pair of heads the within-head
/// assignment is solved on its block of the merged cost, and the heads are assigned with those
/// optimal values. This does not depend on the within-head permutation, which coordinate descent
/// between the two groups would need to know first (and stalled on ViT-B without it).
pub(super) fn forward_pass(eng: &mut Engine<'_>) -> Result<Vec<Option<LapSolution>>, MatchError> {
    let n_groups = eng.lay.groups.len();
    let mut done = vec![false; n_groups];
    let mut warm = vec![None; n_groups];
    for _ in 0..n_groups {
        let waiting = (0..n_groups).filter(|&g| !done[g]);
        // In order: a head group whose members are ready but for their inner axes goes nested;
        // one whose head members still wait for other groups is not solved from its other
        // members alone meanwhile (LeViT's per-head attention biases, always ready, picked its
        // heads before the projections were settled, and the sweeps did not recover); any other
        // group with ready members is solved from them.
        let mut ready = None;
        for g in waiting.clone() {
            let (inner, outer) = eng.nested_ready(g, &done);
            if !inner.is_empty() {
                ready = Some((g, Some((inner, outer)), Vec::new()));
                break;
            }
            if eng.awaits_inner(g, &done) {
                continue;
            }
            let members = eng.ready_members(g, &done);
            if !members.is_empty() {
                ready = Some((g, None, members));
                break;
            }
        }
        // Nothing else: a waiting head group from the members it has.
        let ready = ready.or_else(|| {
            waiting
                .clone()
                .map(|g| (g, None, eng.ready_members(g, &done)))
                .find(|(_, _, m)| !m.is_empty())
        });
        if let Some((g, Some((inner, outer)), _)) = ready {
            eng.perms[g] = eng.nested_solve(g, &inner, &outer)?;
            done[g] = true;
            continue;
        }
        let (g, members) = ready.map(|(g, _, m)| (g, m)).unwrap_or_else(|| {
            let g = waiting.clone().next().expect("a group is waiting");
            (g, eng.lay.groups[g].members.clone())
        });
        let n = eng.lay.groups[g].size;
        let mut c = vec![0.0f32; n * n];
        eng.add_cost(g, &members, &mut c)?;
        let sol = eng.assign(g, &c, n, None)?;
        eng.perms[g] = sol.col_ind.clone();
        eng.pending[g] = eng.lay.groups[g]
            .members
            .iter()
            .copied()
            .filter(|m| !members.contains(m))
            .collect();
        eng.costs[g] = c;
        eng.release(g);
        // The first sweep's solve starts from this one (the same matrix when no member was
        // missing: ViT-B's MLP groups, 3072 units each, were solved cold twice).
        warm[g] = Some(sol);
        done[g] = true;
    }
    Ok(warm)
}

//! The cost engine: every group's cost matrix, kept and updated as neighbouring permutations
//! change, and the assignments solved on them.

use super::check::{check, Group, Layout, Tensor};
use super::gather::{dot_f64, gather, gemm_nt, operand, row_blocks, Index, Operand};
use super::timing::Clock;
use crate::error::MatchError;
use crate::lap::{self, LapSolution, WarmStart};
use faer::Par;

pub(super) struct Engine<'a> {
    pub(super) lay: Layout<'a>,
    pub(super) perms: Vec<Vec<usize>>,
    /// Each group's cost; empty until its first solve computes it.
    pub(super) costs: Vec<Vec<f32>>,
    /// Members whose part of a group's cost is still missing (after the forward pass, which
    /// keeps the part it computed); added by the group's next `refresh`.
    pub(super) pending: Vec<Vec<(usize, usize)>>,
    pub(super) par: Par,
    pub(super) buf_a: Vec<f32>,
    pub(super) buf_b: Vec<f32>,
    pub(super) buf_old: Vec<f32>,
    /// Whether group `g` keeps its cost between visits ([`super::Options::max_cost_bytes`]).
    pub(super) keep: Vec<bool>,
    pub(super) clock: Clock,
}

impl<'a> Engine<'a> {
    pub(super) fn new(lay: Layout<'a>, perms: Vec<Vec<usize>>, par: Par) -> Self {
        let n_groups = lay.groups.len();
        Engine {
            lay,
            perms,
            costs: vec![Vec::new(); n_groups],
            pending: vec![Vec::new(); n_groups],
            par,
            buf_a: Vec::new(),
            buf_b: Vec::new(),
            buf_old: Vec::new(),
            keep: vec![true; n_groups],
            clock: Clock::default(),
        }
    }

    /// Index tables for member `(p, ax)`: B's other permuted axes read through their permutation;
    /// A (when `for_a`) is read as it is.
    pub(super) fn tables(&self, p: usize, for_a: bool) -> Vec<Index<'_>> {
        let t = &self.lay.a[p];
        (0..t.shape.len())
            .map(|k| match (for_a, self.lay.axis_group[p][k]) {
                (false, Some(h)) => Index::Map(&self.perms[h]),
                _ => Index::All(t.shape[k]),
            })
            .collect()
    }

    /// [`operand`], timed as a gather.
    pub(super) fn operand<'s>(
        &self,
        t: &Tensor<'s>,
        ax: usize,
        idx: &[Index<'_>],
        buf: &'s mut Vec<f32>,
    ) -> Operand<'s> {
        self.clock.gather.time(|| operand(t, ax, idx, buf))
    }

    /// [`gemm_nt`], timed.
    pub(super) fn gemm(&self, c: &mut [f32], n: usize, lhs: &Operand<'_>, rhs: &Operand<'_>) {
        self.clock.gemm.time(|| gemm_nt(c, n, lhs, rhs, self.par));
    }

    /// The maximising assignment of the `n x n` cost `c` of group `g`, timed; a refusal of the
    /// solver is reported against the group.
    pub(super) fn assign(
        &self,
        g: usize,
        c: &[f32],
        n: usize,
        warm: Option<WarmStart<'_>>,
    ) -> Result<LapSolution, MatchError> {
        self.clock
            .lap
            .time(|| lap::solve(c, n, n, true, warm))
            .map_err(|source| MatchError::Assignment {
                group: self.lay.group_name(g),
                source,
            })
    }

    /// The cost matrix of group `g` from scratch.
    pub(super) fn full_cost(&mut self, g: usize) -> Vec<f32> {
        let n = self.lay.groups[g].size;
        let members = self.lay.groups[g].members.clone();
        let mut c = vec![0.0f32; n * n];
        self.add_cost(g, &members, &mut c);
        c
    }

    /// Adds the part of group `g`'s cost that `members` contribute to `c`.
    pub(super) fn add_cost(&mut self, g: usize, members: &[(usize, usize)], c: &mut [f32]) {
        let n = self.lay.groups[g].size;
        let mut ba = std::mem::take(&mut self.buf_a);
        let mut bb = std::mem::take(&mut self.buf_b);
        for &(p, ax) in members {
            let mut ta = self.tables(p, true);
            let mut tb = self.tables(p, false);
            // The group's own axis is not permuted: slot i of A against unit j of B.
            ta[ax] = Index::All(n);
            tb[ax] = Index::All(n);
            // A large half-precision tensor permuted on another axis than its first is read a
            // block of rows at a time (the product sums over those rows).
            let (t_a, t_b) = (&self.lay.a[p], &self.lay.b[p]);
            let blocks = if ax == 0 {
                std::iter::once(0..t_a.shape[0]).collect()
            } else {
                row_blocks(t_a, t_b)
            };
            let whole = blocks.len() == 1;
            for rows in blocks {
                let (ra, rb) = if whole {
                    (Vec::new(), Vec::new())
                } else {
                    (ta[0].part(rows.clone()), tb[0].part(rows))
                };
                let (mut ta, mut tb) = (ta.clone(), tb.clone());
                if !whole {
                    ta[0] = Index::Map(&ra);
                    tb[0] = Index::Map(&rb);
                }
                let oa = self.operand(t_a, ax, &ta, &mut ba);
                let ob = self.operand(t_b, ax, &tb, &mut bb);
                self.gemm(c, n, &oa, &ob);
            }
        }
        self.buf_a = ba;
        self.buf_b = bb;
    }

    /// Drops group `g`'s cost after its solve unless it is kept: its next visit computes it
    /// afresh, and no update touches it meanwhile.
    pub(super) fn release(&mut self, g: usize) {
        if !self.keep[g] {
            self.costs[g] = Vec::new();
            self.pending[g].clear();
        }
    }

    /// Computes the cost of group `g` if it has not been computed yet, or completes it.
    pub(super) fn refresh(&mut self, g: usize) {
        if self.costs[g].is_empty() {
            self.costs[g] = self.full_cost(g);
        } else if !self.pending[g].is_empty() {
            let rest = std::mem::take(&mut self.pending[g]);
            let mut c = std::mem::take(&mut self.costs[g]);
            self.add_cost(g, &rest, &mut c);
            self.costs[g] = c;
        }
    }

    /// Updates every cost that reads an axis of group `h`, whose permutation changed from `old`
    /// to the current one at positions `moved`: the change is a product whose inner dimension
    /// covers the moved units only. Even when every unit moves (the first sweep) this costs no
    /// more than recomputing the member it touches, and less than recomputing the whole group,
    /// which measured 15-25% slower end to end on the MLPs. Costs not computed yet are skipped.
    pub(super) fn propagate(&mut self, h: usize, old: &[usize], moved: &[usize]) {
        let mut ba = std::mem::take(&mut self.buf_a);
        let mut bb = std::mem::take(&mut self.buf_b);
        let mut bo = std::mem::take(&mut self.buf_old);
        let old_sel: Vec<usize> = moved.iter().map(|&i| old[i]).collect();
        let new_sel: Vec<usize> = moved.iter().map(|&i| self.perms[h][i]).collect();
        for &(p, k) in &self.lay.groups[h].members {
            for (ax, g) in self.lay.axis_group[p].clone().into_iter().enumerate() {
                let Some(g) = g else { continue };
                if ax == k || self.costs[g].is_empty() || self.pending[g].contains(&(p, ax)) {
                    continue;
                }
                let n = self.lay.groups[g].size;
                let mut ta = self.tables(p, true);
                let mut tb = self.tables(p, false);
                ta[ax] = Index::All(n);
                tb[ax] = Index::All(n);
                ta[k] = Index::Map(moved);
                tb[k] = Index::Map(&new_sel);
                let mut to = self.tables(p, false);
                to[ax] = Index::All(n);
                to[k] = Index::Map(&old_sel);
                // Selecting `moved` on another axis always gathers, so both B operands are
                // buffers of one layout and can be subtracted in place.
                let (r, transposed) = {
                    let ob = self.operand(&self.lay.b[p], ax, &tb, &mut bb);
                    (ob.r, ob.transposed)
                };
                self.operand(&self.lay.b[p], ax, &to, &mut bo);
                self.clock.gather.time(|| {
                    for (x, o) in bb.iter_mut().zip(&bo) {
                        *x -= o;
                    }
                });
                let diff = Operand {
                    data: &bb,
                    r,
                    transposed,
                };
                let oa = self.operand(&self.lay.a[p], ax, &ta, &mut ba);
                let mut c = std::mem::take(&mut self.costs[g]);
                self.gemm(&mut c, n, &oa, &diff);
                self.costs[g] = c;
            }
        }
        self.buf_a = ba;
        self.buf_b = bb;
        self.buf_old = bo;
    }

    /// `sum_p <A_p, pi(B_p)>` over the parameters some group touches, in float64.
    pub(super) fn objective(&mut self) -> f64 {
        let mut total = 0.0f64;
        let mut buf = std::mem::take(&mut self.buf_b);
        for p in 0..self.lay.a.len() {
            if self.lay.axis_group[p].iter().all(Option::is_none) {
                continue;
            }
            // A in its own layout; B gathered into the same layout (axis 0 first is the identity
            // order), so the two flat arrays line up.
            let tb = self.tables(p, false);
            let (t_a, t_b) = (&self.lay.a[p], &self.lay.b[p]);
            let row_len = t_a.data.len() / t_a.shape.first().copied().unwrap_or(1).max(1);
            let blocks = row_blocks(t_a, t_b);
            let whole = blocks.len() == 1;
            for rows in blocks {
                let mut tb = tb.clone();
                let rb = if whole {
                    Vec::new()
                } else {
                    tb[0].part(rows.clone())
                };
                if !whole {
                    tb[0] = Index::Map(&rb);
                }
                self.clock.gather.time(|| gather(t_b, 0, &tb, &mut buf));
                let a = t_a.data.slice(rows.start * row_len..rows.end * row_len);
                total += dot_f64(a, &buf);
            }
        }
        self.buf_b = buf;
        total
    }
}

/// The cost matrix of group `g` (row-major `n x n`, float32) under the permutations `perms`, as
/// weight matching computes it: `sum over members (p, ax) of A_p^(ax) (B_p, other axes permuted)^(ax)T`.
///
/// # Errors
/// As [`super::weight_matching`] (but weights are not checked for NaN), and
/// [`MatchError::NoSuchGroup`] when `g` is out of range.
pub fn group_cost<'a>(
    groups: &'a [Group],
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    perms: &[Vec<usize>],
    g: usize,
) -> Result<Vec<f32>, MatchError> {
    let perms = perms.to_vec();
    let lay = check(groups, a, b, Some(&perms))?;
    if g >= groups.len() {
        return Err(MatchError::NoSuchGroup {
            index: g,
            count: groups.len(),
        });
    }
    Ok(Engine::new(lay, perms, Par::rayon(0)).full_cost(g))
}

//! The cost engine: every group's cost matrix, kept and updated as neighbouring permutations
//! change, and the assignments solved on them.

use super::check::{check, check_finite, Group, Layout, Tensor};
use super::gather::{dot_f64, gather, gemm_nt, operand, row_blocks, Index, Operand};
use super::products::{Product, Products};
use super::timing::Clock;
use crate::error::MatchError;
use crate::lap::{self, LapSolution, WarmStart};
use faer::Par;
use std::cell::RefCell;

/// The CPU kernels' gather buffers, reused from product to product.
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    old: Vec<f32>,
}

pub(super) struct Engine<'a> {
    pub(super) lay: Layout<'a>,
    pub(super) perms: Vec<Vec<usize>>,
    /// Each group's cost; empty until its first solve computes it.
    pub(super) costs: Vec<Vec<f32>>,
    /// Members whose part of a group's cost is still missing (after the forward pass, which
    /// keeps the part it computed); added by the group's next `refresh`.
    pub(super) pending: Vec<Vec<(usize, usize)>>,
    pub(super) par: Par,
    bufs: RefCell<Buffers>,
    /// Whether group `g` keeps its cost between visits ([`super::Options::max_cost_bytes`]).
    pub(super) keep: Vec<bool>,
    pub(super) clock: Clock,
    /// The backend that computes the products where the weights live; `None`: this engine's
    /// kernels on CPU threads, reading the layout's tensors.
    device: RefCell<Option<&'a mut dyn Products>>,
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
            bufs: RefCell::default(),
            keep: vec![true; n_groups],
            clock: Clock::default(),
            device: RefCell::new(None),
        }
    }

    /// The same engine with its products computed by `products` (the layout's tensors then only
    /// give shapes and names).
    pub(super) fn on(self, products: &'a mut dyn Products) -> Self {
        *self.device.borrow_mut() = Some(products);
        self
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

    /// The product of member `(p, ax)` to a cost: slot i of A against unit j of B on the group's
    /// own axis, B's other permuted axes read through their permutations.
    fn member_product(&self, p: usize, ax: usize) -> Product<'_> {
        let n = self.lay.a[p].shape[ax];
        let mut a = self.tables(p, true);
        let mut b = self.tables(p, false);
        a[ax] = Index::All(n);
        b[ax] = Index::All(n);
        Product {
            param: p,
            shape: self.lay.a[p].shape,
            axis: ax,
            a,
            b,
            b_old: None,
        }
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

    /// Adds the products `requests` to the `n x n` cost `c`: on the backend when there is one
    /// (one call, one `n x n` answer), else with this engine's gathers and GEMMs.
    pub(super) fn add_products(
        &self,
        n: usize,
        requests: &[Product<'_>],
        c: &mut [f32],
    ) -> Result<(), MatchError> {
        if requests.is_empty() {
            return Ok(());
        }
        if let Some(dev) = self.device.borrow_mut().as_mut() {
            return self.clock.gemm.time(|| dev.add_products(n, requests, c));
        }
        let mut bufs = self.bufs.borrow_mut();
        let Buffers { a, b, old } = &mut *bufs;
        for req in requests {
            self.cpu_product(n, req, a, b, old, c);
        }
        Ok(())
    }

    /// One product on CPU threads, added to `c`.
    fn cpu_product(
        &self,
        n: usize,
        req: &Product<'_>,
        ba: &mut Vec<f32>,
        bb: &mut Vec<f32>,
        bo: &mut Vec<f32>,
        c: &mut [f32],
    ) {
        let ax = req.axis;
        let t_a = Tensor {
            shape: req.shape,
            ..self.lay.a[req.param]
        };
        let t_b = Tensor {
            shape: req.shape,
            ..self.lay.b[req.param]
        };
        if let Some(to) = &req.b_old {
            // Selecting moved units on another axis always gathers, so both B operands are
            // buffers of one layout and can be subtracted in place.
            let (r, transposed) = {
                let ob = self.operand(&t_b, ax, &req.b, bb);
                (ob.r, ob.transposed)
            };
            self.operand(&t_b, ax, to, bo);
            self.clock.gather.time(|| {
                for (x, o) in bb.iter_mut().zip(bo.iter()) {
                    *x -= o;
                }
            });
            let diff = Operand {
                data: bb,
                r,
                transposed,
            };
            let oa = self.operand(&t_a, ax, &req.a, ba);
            self.gemm(c, n, &oa, &diff);
            return;
        }
        // A large half-precision tensor permuted on another axis than its first is read a block
        // of rows at a time (the product sums over those rows).
        let blocks = if ax == 0 {
            std::iter::once(0..t_a.shape[0]).collect()
        } else {
            row_blocks(&t_a, &t_b)
        };
        let whole = blocks.len() == 1;
        for rows in blocks {
            let (ra, rb) = if whole {
                (Vec::new(), Vec::new())
            } else {
                (req.a[0].part(rows.clone()), req.b[0].part(rows))
            };
            let (mut ta, mut tb) = (req.a.clone(), req.b.clone());
            if !whole {
                ta[0] = Index::Map(&ra);
                tb[0] = Index::Map(&rb);
            }
            let oa = self.operand(&t_a, ax, &ta, ba);
            let ob = self.operand(&t_b, ax, &tb, bb);
            self.gemm(c, n, &oa, &ob);
        }
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
    pub(super) fn full_cost(&self, g: usize) -> Result<Vec<f32>, MatchError> {
        let n = self.lay.groups[g].size;
        let mut c = vec![0.0f32; n * n];
        self.add_cost(g, &self.lay.groups[g].members, &mut c)?;
        Ok(c)
    }

    /// Adds the part of group `g`'s cost that `members` contribute to `c`.
    pub(super) fn add_cost(
        &self,
        g: usize,
        members: &[(usize, usize)],
        c: &mut [f32],
    ) -> Result<(), MatchError> {
        let requests: Vec<Product<'_>> = members
            .iter()
            .map(|&(p, ax)| self.member_product(p, ax))
            .collect();
        self.add_products(self.lay.groups[g].size, &requests, c)
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
    pub(super) fn refresh(&mut self, g: usize) -> Result<(), MatchError> {
        if self.costs[g].is_empty() {
            self.costs[g] = self.full_cost(g)?;
        } else if !self.pending[g].is_empty() {
            let rest = std::mem::take(&mut self.pending[g]);
            let mut c = std::mem::take(&mut self.costs[g]);
            let done = self.add_cost(g, &rest, &mut c);
            self.costs[g] = c;
            done?;
        }
        Ok(())
    }

    /// Updates every cost that reads an axis of group `h`, whose permutation changed from `old`
    /// to the current one at positions `moved`: the change is a product whose inner dimension
    /// covers the moved units only. Even when every unit moves (the first sweep) this costs no
    /// more than recomputing the member it touches, and less than recomputing the whole group,
    /// which measured 15-25% slower end to end on the MLPs. Costs not computed yet are skipped.
    /// The updates of one cost go to the backend as one call.
    pub(super) fn propagate(
        &mut self,
        h: usize,
        old: &[usize],
        moved: &[usize],
    ) -> Result<(), MatchError> {
        // (parameter, axis of h, axis of the cost to update): in the order they are met.
        let mut work: Vec<(usize, usize, usize)> = Vec::new();
        for &(p, k) in &self.lay.groups[h].members {
            for (ax, g) in self.lay.axis_group[p].iter().enumerate() {
                let Some(g) = *g else { continue };
                if ax == k || self.costs[g].is_empty() || self.pending[g].contains(&(p, ax)) {
                    continue;
                }
                work.push((p, k, ax));
            }
        }
        let target = |&(p, _, ax): &(usize, usize, usize)| {
            self.lay.axis_group[p][ax].expect("a permuted axis")
        };
        let mut targets: Vec<usize> = work.iter().map(target).collect();
        targets.sort_unstable();
        targets.dedup();
        let mut taken: Vec<(usize, Vec<f32>)> = targets
            .iter()
            .map(|&g| (g, std::mem::take(&mut self.costs[g])))
            .collect();
        let old_sel: Vec<usize> = moved.iter().map(|&i| old[i]).collect();
        let new_sel: Vec<usize> = moved.iter().map(|&i| self.perms[h][i]).collect();
        let mut done = Ok(());
        for (g, c) in &mut taken {
            let requests: Vec<Product<'_>> = work
                .iter()
                .filter(|w| target(w) == *g)
                .map(|&(p, k, ax)| {
                    let mut req = self.member_product(p, ax);
                    req.a[k] = Index::Map(moved);
                    req.b[k] = Index::Map(&new_sel);
                    let mut to = req.b.clone();
                    to[k] = Index::Map(&old_sel);
                    req.b_old = Some(to);
                    req
                })
                .collect();
            done = self.add_products(self.lay.groups[*g].size, &requests, c);
            if done.is_err() {
                break;
            }
        }
        for (g, c) in taken {
            self.costs[g] = c;
        }
        done
    }

    /// Every weight that some group permutes is finite, in both models (on the backend, where
    /// the weights are, when there is one).
    pub(super) fn check_finite(&self) -> Result<(), MatchError> {
        match self.device.borrow_mut().as_mut() {
            None => check_finite(&self.lay),
            Some(dev) => {
                let touched: Vec<usize> = (0..self.lay.a.len())
                    .filter(|&p| self.lay.axis_group[p].iter().any(Option::is_some))
                    .collect();
                match dev.first_non_finite(&touched)? {
                    None => Ok(()),
                    Some((p, model)) => Err(self.lay.non_finite(p, model)),
                }
            }
        }
    }

    /// `sum_p <A_p, pi(B_p)>` over the parameters some group touches, in float64.
    pub(super) fn objective(&self) -> Result<f64, MatchError> {
        let touched =
            (0..self.lay.a.len()).filter(|&p| self.lay.axis_group[p].iter().any(Option::is_some));
        if let Some(dev) = self.device.borrow_mut().as_mut() {
            let parts: Vec<(usize, Vec<Index<'_>>)> =
                touched.map(|p| (p, self.tables(p, false))).collect();
            return self.clock.gemm.time(|| dev.objective(&parts));
        }
        let mut total = 0.0f64;
        let mut bufs = self.bufs.borrow_mut();
        let buf = &mut bufs.b;
        for p in touched {
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
                self.clock.gather.time(|| gather(t_b, 0, &tb, buf));
                let a = t_a.data.slice(rows.start * row_len..rows.end * row_len);
                total += dot_f64(a, buf);
            }
        }
        Ok(total)
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
    Engine::new(lay, perms, Par::rayon(0)).full_cost(g)
}

//! Weight matching (Git Re-Basin, Algorithm 1): coordinate descent over permutation groups, each
//! step a linear assignment problem on the cost `C_g = sum_k A_k (B_k, other axes permuted)^T`.
//!
//! Unlike the official loop, which recomputes every cost matrix from scratch and cold-solves it,
//! this engine keeps every group's cost matrix and updates it when a neighbouring permutation
//! changes: if `pi_h` moves the units `S`, each cost that reads an axis permuted by `pi_h` changes
//! by a product whose inner dimension is `|S|` times the rest of that tensor, instead of all of it.
//! After the first sweep few units move, so the updates are small. Every LAP is warm-started from
//! the group's previous solution. The result is the same as recomputing (up to float32 rounding).
//!
//! Tensors are float32, row-major, PyTorch layout; a permutation `perm` of a group says that slot
//! `i` of model A is matched with unit `perm[i]` of model B (the official convention).

use crate::lap::{self, LapSolution, WarmStart};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use thiserror::Error;

/// Bad input to [`weight_matching`]. Names refer to parameter and group indices; the Python layer
/// translates them back to names.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MatchError {
    /// Models A and B do not list the same number of parameters.
    #[error("model A has {a} parameters but model B has {b}")]
    ParamCount {
        /// Count in A.
        a: usize,
        /// Count in B.
        b: usize,
    },
    /// A parameter's shape differs between the models, or does not match its data length.
    #[error("parameter {param}: {msg}")]
    BadParam {
        /// Parameter index.
        param: usize,
        /// What is wrong.
        msg: String,
    },
    /// A group is malformed: empty, too small, an axis out of range or of the wrong size, or an
    /// axis claimed twice.
    #[error("group {group}: {msg}")]
    BadGroup {
        /// Group index.
        group: usize,
        /// What is wrong.
        msg: String,
    },
    /// An initial permutation is not a permutation of the group's size.
    #[error("init for group {group}: {msg}")]
    BadInit {
        /// Group index.
        group: usize,
        /// What is wrong.
        msg: String,
    },
    /// A cost matrix held NaN (a NaN or infinite weight).
    #[error("group {group}: the cost matrix is not finite; check the weights for NaN or inf")]
    NonFinite {
        /// Group index.
        group: usize,
    },
}

/// A float32 tensor, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    /// Elements, row-major.
    pub data: &'a [f32],
    /// Dimensions.
    pub shape: &'a [usize],
}

/// One permutation group: its size and the `(parameter index, axis)` it permutes.
#[derive(Debug, Clone)]
pub struct Group {
    /// Number of units.
    pub size: usize,
    /// Members.
    pub members: Vec<(usize, usize)>,
}

/// Options of [`weight_matching`].
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many sweeps over the groups.
    pub max_iter: usize,
    /// Seed of the visiting order.
    pub seed: u64,
    /// Initial permutations (identity when `None`).
    pub init: Option<Vec<Vec<usize>>>,
    /// Before the sweeps, solve each group once in the given order (from `init`) with the cost of
    /// its *ready* members only: those whose other permuted axes belong to groups solved
    /// already. Walking a network from its input, every cost then compares units whose inputs
    /// are already matched, so a permuted copy is recovered exactly in this one pass, where
    /// coordinate descent from the identity can stop in a local optimum.
    pub forward: bool,
    /// Each group's assignment from an earlier run on similar weights (its duals make the first
    /// solves warm): [`MatchResult::warm`] of that run. Entries of the wrong size are ignored.
    pub warm: Option<Vec<Option<LapSolution>>>,
}

/// What [`weight_matching`] found.
#[derive(Debug, Clone)]
pub struct MatchResult {
    /// One permutation per group.
    pub perms: Vec<Vec<usize>>,
    /// `sum_p <A_p, pi(B_p)>` over the parameters that the groups touch, at the end.
    pub objective: f64,
    /// Sweeps run (the last one made no progress, unless `max_iter` stopped the loop).
    pub sweeps: usize,
    /// The objective after each sweep.
    pub history: Vec<f64>,
    /// The order in which each sweep visited the groups.
    pub orders: Vec<Vec<usize>>,
    /// Each group's last assignment with its duals, to warm-start a later run ([`Options::warm`]).
    pub warm: Vec<Option<LapSolution>>,
}

/// SplitMix64: a small, well-mixed generator, so the visiting order depends on the seed alone.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher-Yates shuffle of `0..n`.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// The visiting order of every sweep for `n_groups` groups and `seed` (exposed so that reference
/// implementations can replay it).
pub fn visit_orders(n_groups: usize, seed: u64, sweeps: usize) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64(seed);
    (0..sweeps).map(|_| rng.permutation(n_groups)).collect()
}

/// Which axis of which parameter each group permutes, checked.
struct Layout<'a> {
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    groups: &'a [Group],
    /// `axis_group[p][k]`: the group permuting axis `k` of parameter `p`.
    axis_group: Vec<Vec<Option<usize>>>,
}

fn check<'a>(
    groups: &'a [Group],
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    init: Option<&Vec<Vec<usize>>>,
) -> Result<Layout<'a>, MatchError> {
    if a.len() != b.len() {
        return Err(MatchError::ParamCount {
            a: a.len(),
            b: b.len(),
        });
    }
    for (p, (ta, tb)) in a.iter().zip(b).enumerate() {
        let bad = |msg: String| Err(MatchError::BadParam { param: p, msg });
        if ta.shape != tb.shape {
            return bad(format!(
                "shape {:?} in model A but {:?} in model B",
                ta.shape, tb.shape
            ));
        }
        let numel: usize = ta.shape.iter().product();
        if ta.data.len() != numel || tb.data.len() != numel {
            return bad(format!(
                "shape {:?} needs {numel} elements, got {} and {}",
                ta.shape,
                ta.data.len(),
                tb.data.len()
            ));
        }
    }
    let mut axis_group: Vec<Vec<Option<usize>>> =
        a.iter().map(|t| vec![None; t.shape.len()]).collect();
    for (g, group) in groups.iter().enumerate() {
        let bad = |msg: String| Err(MatchError::BadGroup { group: g, msg });
        if group.size < 2 {
            return bad(format!(
                "has {} unit(s); a permutation needs at least 2",
                group.size
            ));
        }
        if group.members.is_empty() {
            return bad("has no member".to_string());
        }
        for &(p, k) in &group.members {
            let Some(t) = a.get(p) else {
                return bad(format!("names parameter {p}, but there are {}", a.len()));
            };
            if k >= t.shape.len() {
                return bad(format!(
                    "permutes axis {k} of parameter {p}, of shape {:?}",
                    t.shape
                ));
            }
            if t.shape[k] != group.size {
                return bad(format!(
                    "has {} units but axis {k} of parameter {p} has size {}",
                    group.size, t.shape[k]
                ));
            }
            if let Some(other) = axis_group[p][k] {
                return bad(format!(
                    "axis {k} of parameter {p} is also in group {other}"
                ));
            }
            axis_group[p][k] = Some(g);
        }
    }
    if let Some(init) = init {
        if init.len() != groups.len() {
            return Err(MatchError::BadInit {
                group: init.len().min(groups.len()),
                msg: format!(
                    "{} permutations given for {} groups",
                    init.len(),
                    groups.len()
                ),
            });
        }
        for (g, (p, group)) in init.iter().zip(groups).enumerate() {
            let mut seen = vec![false; group.size];
            let ok = p.len() == group.size
                && p.iter()
                    .all(|&x| x < group.size && !std::mem::replace(&mut seen[x], true));
            if !ok {
                return Err(MatchError::BadInit {
                    group: g,
                    msg: format!("not a permutation of 0..{}", group.size),
                });
            }
        }
    }
    Ok(Layout {
        a,
        b,
        groups,
        axis_group,
    })
}

/// Source index of each position of one output axis.
enum Index<'s> {
    All(usize),
    Map(&'s [usize]),
}

impl Index<'_> {
    fn len(&self) -> usize {
        match self {
            Index::All(n) => *n,
            Index::Map(m) => m.len(),
        }
    }

    fn get(&self, i: usize) -> usize {
        match self {
            Index::All(_) => i,
            Index::Map(m) => m[i],
        }
    }
}

/// Writes `t` with axis `ax` first and the other axes after it in order, each output axis `k`
/// reading source positions `idx[k]`, as a row-major `(idx[ax].len(), rest)` matrix into `out`.
fn gather(t: &Tensor<'_>, ax: usize, idx: &[Index<'_>], out: &mut Vec<f32>) -> (usize, usize) {
    let nd = t.shape.len();
    let mut strides = vec![1usize; nd];
    for k in (0..nd.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * t.shape[k + 1];
    }
    let order: Vec<usize> = std::iter::once(ax)
        .chain((0..nd).filter(|&k| k != ax))
        .collect();
    // Offsets contributed by each output axis, precomputed.
    let offs: Vec<Vec<usize>> = order
        .iter()
        .map(|&k| {
            (0..idx[k].len())
                .map(|i| idx[k].get(i) * strides[k])
                .collect()
        })
        .collect();
    let rows = offs[0].len();
    let rest: usize = offs[1..].iter().map(|o| o.len()).product();
    out.clear();
    if rows * rest == 0 {
        return (rows, rest);
    }
    if offs.len() == 1 {
        out.extend(offs[0].iter().map(|&o| t.data[o]));
        return (rows, rest);
    }
    let last = offs.len() - 1;
    // The innermost output axis is the source's last axis, unselected: copy whole runs.
    let run =
        (order[last] == nd - 1 && matches!(idx[nd - 1], Index::All(_))).then(|| offs[last].len());
    out.reserve(rows * rest);
    let dst = &mut out.spare_capacity_mut()[..rows * rest];
    let fill = |r: usize, row: &mut [MaybeUninit<f32>]| {
        let mut counter = vec![0usize; last];
        let mut pos = 0;
        loop {
            let base = offs[0][r] + (1..last).map(|d| offs[d][counter[d]]).sum::<usize>();
            let len = offs[last].len();
            let to = &mut row[pos..pos + len];
            match run {
                // Kernel-sized runs (a 3x3 convolution's 9 taps) copied with a size known at
                // compile time: a variable-length copy per run is a library call, which
                // measured as much as the GEMM it feeds on ResNet-50.
                Some(1) => {
                    to[0].write(t.data[base]);
                }
                Some(9) => put(to, fixed::<9>(&t.data[base..])),
                Some(25) => put(to, fixed::<25>(&t.data[base..])),
                Some(49) => put(to, fixed::<49>(&t.data[base..])),
                Some(_) => put(to, &t.data[base..base + len]),
                None => {
                    for (d, &o) in to.iter_mut().zip(&offs[last]) {
                        d.write(t.data[base + o]);
                    }
                }
            }
            pos += len;
            // Advance the odometer over the middle axes.
            let mut d = last;
            loop {
                d -= 1;
                if d == 0 {
                    return;
                }
                counter[d] += 1;
                if counter[d] < offs[d].len() {
                    break;
                }
                counter[d] = 0;
            }
        }
    };
    // Gathers are memory-bound copies that would otherwise run on one thread between threaded
    // GEMMs; rows in parallel, in tasks of at least ~64 KiB.
    if rows * rest >= 1 << 15 {
        dst.par_chunks_mut(rest)
            .with_min_len((1 << 14) / rest + 1)
            .enumerate()
            .for_each(|(r, row)| fill(r, row));
    } else {
        for (r, row) in dst.chunks_mut(rest).enumerate() {
            fill(r, row);
        }
    }
    // SAFETY: every one of the `rows * rest` slots was written above (each row's odometer walks
    // all `rest` positions of its chunk).
    unsafe { out.set_len(rows * rest) };
    (rows, rest)
}

/// Copies `src` into the uninitialised `dst` of the same length.
#[inline(always)]
fn put(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// The first `L` values of `x` as an array (so that copying them has a size known at compile time).
#[inline(always)]
fn fixed<const L: usize>(x: &[f32]) -> &[f32; L] {
    x[..L].try_into().expect("a run of L values")
}

/// The matrix `M^(ax)` of a tensor read through `idx` (axis `ax`'s units as rows, everything
/// else flattened as columns), borrowed when it is the tensor itself, else gathered into `buf`.
/// `transposed`: stored as `r x n` row-major (a matrix whose permuted axis is its columns is
/// stored by selecting rows, which copies whole rows instead of transposing element by element).
struct Operand<'s> {
    data: &'s [f32],
    r: usize,
    transposed: bool,
}

fn operand<'s>(t: &Tensor<'s>, ax: usize, idx: &[Index<'_>], buf: &'s mut Vec<f32>) -> Operand<'s> {
    let nd = t.shape.len();
    if nd == 2 && ax == 1 {
        let cols = t.shape[1];
        return match &idx[0] {
            Index::All(r) => Operand {
                data: t.data,
                r: *r,
                transposed: true,
            },
            Index::Map(rows) => {
                buf.clear();
                for &r in rows.iter() {
                    buf.extend_from_slice(&t.data[r * cols..(r + 1) * cols]);
                }
                Operand {
                    data: buf,
                    r: rows.len(),
                    transposed: true,
                }
            }
        };
    }
    if ax == 0 && idx.iter().all(|i| matches!(i, Index::All(_))) {
        let r = t.data.len() / t.shape[0].max(1);
        return Operand {
            data: t.data,
            r,
            transposed: false,
        };
    }
    let (_, r) = gather(t, ax, idx, buf);
    Operand {
        data: buf,
        r,
        transposed: false,
    }
}

impl Operand<'_> {
    /// The `n x r` matrix.
    fn mat(&self, n: usize) -> MatRef<'_, f32> {
        if self.transposed {
            MatRef::from_row_major_slice(self.data, self.r, n).transpose()
        } else {
            MatRef::from_row_major_slice(self.data, n, self.r)
        }
    }
}

/// `c (n x n) += lhs * rhs^T` for two `n x r` operands, threaded.
fn gemm_nt(c: &mut [f32], n: usize, lhs: &Operand<'_>, rhs: &Operand<'_>, par: Par) {
    if lhs.r == 0 {
        return;
    }
    let dst = MatMut::from_row_major_slice_mut(c, n, n);
    matmul(
        dst,
        Accum::Add,
        lhs.mat(n),
        rhs.mat(n).transpose(),
        1.0f32,
        par,
    );
}

struct Engine<'a> {
    lay: Layout<'a>,
    perms: Vec<Vec<usize>>,
    /// Each group's cost; empty until its first solve computes it.
    costs: Vec<Vec<f32>>,
    /// Members whose part of a group's cost is still missing (after the forward pass, which
    /// keeps the part it computed); added by the group's next `refresh`.
    pending: Vec<Vec<(usize, usize)>>,
    par: Par,
    buf_a: Vec<f32>,
    buf_b: Vec<f32>,
    buf_old: Vec<f32>,
}

impl<'a> Engine<'a> {
    fn new(lay: Layout<'a>, perms: Vec<Vec<usize>>, par: Par) -> Self {
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
        }
    }

    /// Index tables for member `(p, ax)`: B's other permuted axes read through their permutation;
    /// A (when `for_a`) is read as it is.
    fn tables(&self, p: usize, for_a: bool) -> Vec<Index<'_>> {
        let t = &self.lay.a[p];
        (0..t.shape.len())
            .map(|k| match (for_a, self.lay.axis_group[p][k]) {
                (false, Some(h)) => Index::Map(&self.perms[h]),
                _ => Index::All(t.shape[k]),
            })
            .collect()
    }

    /// The cost matrix of group `g` from scratch.
    fn full_cost(&mut self, g: usize) -> Vec<f32> {
        let n = self.lay.groups[g].size;
        let members = self.lay.groups[g].members.clone();
        let mut c = vec![0.0f32; n * n];
        self.add_cost(g, &members, &mut c);
        c
    }

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
    #[allow(clippy::type_complexity)]
    fn nested_ready(
        &self,
        g: usize,
        done: &[bool],
    ) -> (Vec<(usize, usize, usize)>, Vec<(usize, usize)>) {
        let mut inner = Vec::new();
        let mut outer = Vec::new();
        let n = self.lay.groups[g].size;
        for &(p, k) in &self.lay.groups[g].members {
            let ag = &self.lay.axis_group[p];
            let next = ag
                .get(k + 1)
                .copied()
                .flatten()
                .filter(|&w| w != g && !done[w]);
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

    /// The head assignment of [`forward_pass`]'s nested solve (see there).
    fn nested_solve(
        &mut self,
        g: usize,
        inner: &[(usize, usize, usize)],
        outer: &[(usize, usize)],
    ) -> Result<Vec<usize>, MatchError> {
        let n = self.lay.groups[g].size;
        let mut head = vec![0.0f32; n * n];
        self.add_cost(g, outer, &mut head);
        let mut ws: Vec<usize> = inner.iter().map(|&(_, _, w)| w).collect();
        ws.sort_unstable();
        ws.dedup();
        for w in ws {
            let m = self.lay.groups[w].size;
            let nm = n * m;
            let mut merged = vec![0.0f32; nm * nm];
            let mut ba = std::mem::take(&mut self.buf_a);
            let mut bb = std::mem::take(&mut self.buf_b);
            for &(p, k, _) in inner.iter().filter(|&&(_, _, x)| x == w) {
                // The parameter with its axes k and k + 1 merged (a reshape of the same data).
                let (ta, tb) = (&self.lay.a[p], &self.lay.b[p]);
                let mut shape = ta.shape.to_vec();
                shape[k] *= shape[k + 1];
                shape.remove(k + 1);
                let va = Tensor {
                    data: ta.data,
                    shape: &shape,
                };
                let vb = Tensor {
                    data: tb.data,
                    shape: &shape,
                };
                let mut idx_b: Vec<Index<'_>> = Vec::with_capacity(shape.len());
                for (j, &d) in shape.iter().enumerate() {
                    let src = if j > k { j + 1 } else { j };
                    idx_b.push(match self.lay.axis_group[p][src] {
                        Some(h) if j != k => Index::Map(&self.perms[h]),
                        _ => Index::All(d),
                    });
                }
                let idx_a: Vec<Index<'_>> = shape.iter().map(|&d| Index::All(d)).collect();
                let oa = operand(&va, k, &idx_a, &mut ba);
                let ob = operand(&vb, k, &idx_b, &mut bb);
                gemm_nt(&mut merged, nm, &oa, &ob, self.par);
            }
            self.buf_a = ba;
            self.buf_b = bb;
            // The best within-head value of every pair of heads.
            let mut block = vec![0.0f32; m * m];
            for i in 0..n {
                for j in 0..n {
                    for r in 0..m {
                        let row = (i * m + r) * nm + j * m;
                        block[r * m..(r + 1) * m].copy_from_slice(&merged[row..row + m]);
                    }
                    let sol = lap::solve(&block, m, m, true, None)
                        .map_err(|_| MatchError::NonFinite { group: w })?;
                    head[i * n + j] += sol.objective as f32;
                }
            }
        }
        let sol =
            lap::solve(&head, n, n, true, None).map_err(|_| MatchError::NonFinite { group: g })?;
        Ok(sol.col_ind)
    }

    /// Adds the part of group `g`'s cost that `members` contribute to `c`.
    fn add_cost(&mut self, g: usize, members: &[(usize, usize)], c: &mut [f32]) {
        let n = self.lay.groups[g].size;
        let mut ba = std::mem::take(&mut self.buf_a);
        let mut bb = std::mem::take(&mut self.buf_b);
        for &(p, ax) in members {
            let mut ta = self.tables(p, true);
            let mut tb = self.tables(p, false);
            // The group's own axis is not permuted: slot i of A against unit j of B.
            ta[ax] = Index::All(n);
            tb[ax] = Index::All(n);
            let oa = operand(&self.lay.a[p], ax, &ta, &mut ba);
            let ob = operand(&self.lay.b[p], ax, &tb, &mut bb);
            gemm_nt(c, n, &oa, &ob, self.par);
        }
        self.buf_a = ba;
        self.buf_b = bb;
    }

    /// Computes the cost of group `g` if it has not been computed yet, or completes it.
    fn refresh(&mut self, g: usize) {
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
    fn propagate(&mut self, h: usize, old: &[usize], moved: &[usize]) {
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
                    let ob = operand(&self.lay.b[p], ax, &tb, &mut bb);
                    (ob.r, ob.transposed)
                };
                operand(&self.lay.b[p], ax, &to, &mut bo);
                for (x, o) in bb.iter_mut().zip(&bo) {
                    *x -= o;
                }
                let diff = Operand {
                    data: &bb,
                    r,
                    transposed,
                };
                let oa = operand(&self.lay.a[p], ax, &ta, &mut ba);
                let mut c = std::mem::take(&mut self.costs[g]);
                gemm_nt(&mut c, n, &oa, &diff, self.par);
                self.costs[g] = c;
            }
        }
        self.buf_a = ba;
        self.buf_b = bb;
        self.buf_old = bo;
    }

    /// `sum_p <A_p, pi(B_p)>` over the parameters some group touches, in float64.
    fn objective(&mut self) -> f64 {
        let mut total = 0.0f64;
        let mut buf = std::mem::take(&mut self.buf_b);
        for p in 0..self.lay.a.len() {
            if self.lay.axis_group[p].iter().all(Option::is_none) {
                continue;
            }
            // A in its own layout; B gathered into the same layout (axis 0 first is the identity
            // order), so the two flat arrays line up.
            let tb = self.tables(p, false);
            gather(&self.lay.b[p], 0, &tb, &mut buf);
            total += dot_f64(self.lay.a[p].data, &buf);
        }
        self.buf_b = buf;
        total
    }
}

/// `sum x_i y_i` accumulated in float64 over independent lanes (so that it vectorises).
fn dot_f64(x: &[f32], y: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let (xc, xt) = x.as_chunks::<L>();
    let (yc, yt) = y.as_chunks::<L>();
    for (a, b) in xc.iter().zip(yc) {
        for l in 0..L {
            acc[l] += a[l] as f64 * b[l] as f64;
        }
    }
    let tail: f64 = xt.iter().zip(yt).map(|(a, b)| *a as f64 * *b as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// The cost matrix of group `g` (row-major `n x n`, float32) under the permutations `perms`, as
/// weight matching computes it: `sum over members (p, ax) of A_p^(ax) (B_p, other axes permuted)^(ax)T`.
///
/// # Errors
/// As [`weight_matching`], and [`MatchError::BadGroup`] when `g` is out of range.
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
        return Err(MatchError::BadGroup {
            group: g,
            msg: format!("there are {} groups", groups.len()),
        });
    }
    Ok(Engine::new(lay, perms, Par::rayon(0)).full_cost(g))
}

/// Largest merged (heads x within-head) axis solved nested: its cost matrix is this squared.
const NESTED_MAX: usize = 8192;

/// [`Options::forward`]: each group once, in order, from the cost of its ready members; a group
/// with none yet waits for the next one that has some, and when none has, the first waiting
/// group uses all its members. The partial costs are kept (the groups their members read are
/// settled before them and do not move again in the pass); the sweeps add the missing members.
///
/// A group whose members are followed, in some parameter, by the axis of another group (the heads
/// of an attention layer followed by the units within a head) is solved *nested* when those
/// members are ready apart from that inner axis: for every pair of heads the within-head
/// assignment is solved on its block of the merged cost, and the heads are assigned with those
/// optimal values. This does not depend on the within-head permutation, which coordinate descent
/// between the two groups would need to know first (and stalled on ViT-B without it).
fn forward_pass(eng: &mut Engine<'_>) -> Result<Vec<Option<LapSolution>>, MatchError> {
    let n_groups = eng.lay.groups.len();
    let mut done = vec![false; n_groups];
    let mut warm = vec![None; n_groups];
    for _ in 0..n_groups {
        let waiting = (0..n_groups).filter(|&g| !done[g]);
        let ready = waiting
            .clone()
            .map(|g| (g, eng.ready_members(g, &done)))
            .find(|(_, m)| !m.is_empty());
        if ready.is_none() {
            // Nothing is ready: a head group whose inner axes are all that is missing goes nested.
            let nested = waiting
                .clone()
                .map(|g| (g, eng.nested_ready(g, &done)))
                .find(|(_, (inner, _))| !inner.is_empty());
            if let Some((g, (inner, outer))) = nested {
                eng.perms[g] = eng.nested_solve(g, &inner, &outer)?;
                done[g] = true;
                continue;
            }
        }
        let (g, members) = ready.unwrap_or_else(|| {
            let g = waiting.clone().next().expect("a group is waiting");
            (g, eng.lay.groups[g].members.clone())
        });
        let n = eng.lay.groups[g].size;
        let mut c = vec![0.0f32; n * n];
        eng.add_cost(g, &members, &mut c);
        let sol =
            lap::solve(&c, n, n, true, None).map_err(|_| MatchError::NonFinite { group: g })?;
        eng.perms[g] = sol.col_ind.clone();
        eng.pending[g] = eng.lay.groups[g]
            .members
            .iter()
            .copied()
            .filter(|m| !members.contains(m))
            .collect();
        eng.costs[g] = c;
        // The first sweep's solve starts from this one (the same matrix when no member was
        // missing: ViT-B's MLP groups, 3072 units each, were solved cold twice).
        warm[g] = Some(sol);
        done[g] = true;
    }
    Ok(warm)
}

/// Runs weight matching. `n_threads` is taken from the current rayon pool.
///
/// # Errors
/// [`MatchError`] on inconsistent shapes, groups or initial permutations, or non-finite weights.
pub fn weight_matching<'a>(
    groups: &'a [Group],
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    opts: &Options,
) -> Result<MatchResult, MatchError> {
    let lay = check(groups, a, b, opts.init.as_ref())?;
    let perms = match &opts.init {
        Some(p) => p.clone(),
        None => groups.iter().map(|g| (0..g.size).collect()).collect(),
    };
    let mut eng = Engine::new(lay, perms, Par::rayon(0));
    let mut warm: Vec<Option<LapSolution>> = match &opts.warm {
        Some(w) if w.len() == groups.len() => w
            .iter()
            .zip(groups)
            .map(|(s, g)| {
                s.clone().filter(|s| {
                    s.col_ind.len() == g.size && s.u.len() == g.size && s.v.len() == g.size
                })
            })
            .collect(),
        _ => vec![None; groups.len()],
    };
    if opts.forward {
        for (w, f) in warm.iter_mut().zip(forward_pass(&mut eng)?) {
            if f.is_some() {
                *w = f;
            }
        }
    }
    let mut history = Vec::new();
    // The objective changes by exactly the gain of the group that moved, unless a parameter has
    // two axes in one group (its cost then holds the old permutation on the other axis): track
    // it instead of gathering every parameter after each sweep, which cost as much as the
    // sweeps themselves on ResNet-50.
    let exact_gains = (0..groups.len()).all(|g| {
        let ms = &groups[g].members;
        ms.iter()
            .all(|&(p, ax)| ms.iter().all(|&(q, bx)| q != p || bx == ax))
    });
    let mut tracked = if exact_gains { eng.objective() } else { 0.0 };
    let mut orders = Vec::new();
    let mut rng = SplitMix64(opts.seed);
    for _ in 0..opts.max_iter {
        let order = rng.permutation(groups.len());
        let mut progress = false;
        for &g in &order {
            let n = groups[g].size;
            eng.refresh(g);
            let (c, perm) = (&eng.costs[g], &eng.perms[g]);
            let old_l: f64 = (0..n).map(|i| c[i * n + perm[i]] as f64).sum();
            if !old_l.is_finite() {
                return Err(MatchError::NonFinite { group: g });
            }
            let r2c: Vec<i64>;
            let ws = match &warm[g] {
                Some(s) => {
                    r2c = s.col_ind.iter().map(|&j| j as i64).collect();
                    Some(WarmStart {
                        row_to_col: &r2c,
                        u: &s.u,
                        v: &s.v,
                    })
                }
                None => None,
            };
            let sol =
                lap::solve(c, n, n, true, ws).map_err(|_| MatchError::NonFinite { group: g })?;
            if sol.objective > old_l + 1e-12 {
                tracked += sol.objective - old_l;
                let old = std::mem::replace(&mut eng.perms[g], sol.col_ind.clone());
                let moved: Vec<usize> = (0..n).filter(|&i| old[i] != eng.perms[g][i]).collect();
                eng.propagate(g, &old, &moved);
                progress = true;
            }
            warm[g] = Some(sol);
        }
        history.push(if exact_gains {
            tracked
        } else {
            eng.objective()
        });
        orders.push(order);
        if !progress {
            break;
        }
    }
    let objective = eng.objective();
    Ok(MatchResult {
        objective,
        sweeps: history.len(),
        perms: eng.perms,
        history,
        orders,
        warm,
    })
}

#[cfg(test)]
mod tests;

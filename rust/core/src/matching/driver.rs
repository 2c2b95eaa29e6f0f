//! The coordinate descent of weight matching: options, result, visiting order and the sweeps.

use super::check::{check, check_shapes, Data, Group, Tensor};
use super::engine::Engine;
use super::forward::forward_pass;
use super::products::Products;
use super::timing::Timings;
use crate::error::MatchError;
use crate::lap::{LapSolution, WarmStart};
use faer::Par;
use std::time::{Duration, Instant};

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
    /// solves warm): [`MatchResult::warm`] of that run. Entries of the wrong size are ignored; an
    /// entry of the right size that is not a valid warm start (a column assigned twice,
    /// non-finite duals) is refused with [`MatchError::Assignment`].
    pub warm: Option<Vec<Option<LapSolution>>>,
    /// At most this many bytes of kept cost matrices (`4 n^2` per group; `None`: no limit). The
    /// costs of the smallest groups that fit are kept and updated as neighbouring permutations
    /// change; every other group's cost is computed when the group is visited and dropped after
    /// its solve. Less memory (a Llama MLP group of 5632 units keeps 127 MB), more products: the
    /// result is the same up to float32 rounding.
    pub max_cost_bytes: Option<usize>,
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
    /// Where the time went.
    pub timings: Timings,
}

/// SplitMix64: a small, well-mixed generator, so the visiting order depends on the seed alone.
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher-Yates shuffle of `0..n`.
    pub(super) fn permutation(&mut self, n: usize) -> Vec<usize> {
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

/// Runs weight matching. `n_threads` is taken from the current rayon pool (see
/// [`crate::pool::install`]).
///
/// # Errors
/// [`MatchError`] on inconsistent shapes, groups or initial permutations, non-finite weights, or
/// an assignment the solver refuses (a warm start that does not fit).
pub fn weight_matching<'a>(
    groups: &'a [Group],
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    opts: &Options,
) -> Result<MatchResult, MatchError> {
    let start = Instant::now();
    let lay = check(groups, a, b, opts.init.as_ref())?;
    run(
        Engine::new(lay, first_perms(groups, opts), Par::rayon(0)),
        opts,
        start,
    )
}

/// [`weight_matching`] with the cost products, the objective and the finiteness check computed
/// by `products`, which holds both models' weights (on a GPU, say); the engine gets their names
/// and shapes only, and runs the same coordinate descent on the costs that `products` returns
/// (kept and updated incrementally, warm-started assignments on the CPU, the same stopping rule).
///
/// # Errors
/// As [`weight_matching`], and [`MatchError::Products`] when the backend fails.
pub fn weight_matching_on(
    groups: &[Group],
    names: &[&str],
    shapes: &[&[usize]],
    products: &mut dyn Products,
    opts: &Options,
) -> Result<MatchResult, MatchError> {
    let start = Instant::now();
    let held: Vec<Tensor<'_>> = shapes
        .iter()
        .enumerate()
        .map(|(k, &shape)| Tensor {
            name: names.get(k).copied().unwrap_or(""),
            data: Data::F32(&[]),
            shape,
        })
        .collect();
    let lay = check_shapes(groups, &held, &held, opts.init.as_ref())?;
    let eng = Engine::new(lay, first_perms(groups, opts), Par::rayon(0)).on(products);
    run(eng, opts, start)
}

/// The permutations the matching starts from.
fn first_perms(groups: &[Group], opts: &Options) -> Vec<Vec<usize>> {
    match &opts.init {
        Some(p) => p.clone(),
        None => groups.iter().map(|g| (0..g.size).collect()).collect(),
    }
}

/// The matching on a checked engine: the finiteness check, the forward pass, the sweeps.
fn run(mut eng: Engine<'_>, opts: &Options, start: Instant) -> Result<MatchResult, MatchError> {
    eng.check_finite()?;
    let groups = eng.lay.groups;
    if let Some(cap) = opts.max_cost_bytes {
        eng.keep = kept_costs(groups, cap);
    }
    let mut warm = usable_warm(groups, opts.warm.as_deref());
    let mut forward = Duration::ZERO;
    if opts.forward {
        let t = Instant::now();
        for (w, f) in warm.iter_mut().zip(forward_pass(&mut eng)?) {
            if f.is_some() {
                *w = f;
            }
        }
        forward = t.elapsed();
    }
    let (mut history, orders) = sweeps(&mut eng, &mut warm, opts.max_iter, opts.seed)?;
    let objective = eng.objective()?;
    // The history is tracked by adding float32 gains, which drift from the objective by rounding
    // (~1e-8 relative): shift it onto the recomputed objective, which becomes its last entry
    // exactly, keeping its order (a shift and a clamp are monotone).
    if let Some(&last) = history.last() {
        let offset = objective - last;
        for h in &mut history {
            *h = (*h + offset).min(objective);
        }
        if let Some(end) = history.last_mut() {
            *end = objective;
        }
    }
    Ok(MatchResult {
        objective,
        sweeps: history.len(),
        timings: eng.clock.timings(forward, start.elapsed()),
        perms: eng.perms,
        history,
        orders,
        warm,
    })
}

/// Which groups keep their cost matrix within `cap` bytes: the smallest first (they are visited
/// as often as the large ones and cost the least to keep), ties in group order.
pub(super) fn kept_costs(groups: &[Group], cap: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| groups[g].size);
    let mut keep = vec![false; groups.len()];
    let mut used = 0usize;
    for g in order {
        let bytes = 4 * groups[g].size * groups[g].size;
        if used + bytes > cap {
            break;
        }
        used += bytes;
        keep[g] = true;
    }
    keep
}

/// The earlier assignments of [`Options::warm`] that fit their group's size.
fn usable_warm(groups: &[Group], warm: Option<&[Option<LapSolution>]>) -> Vec<Option<LapSolution>> {
    match warm {
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
    }
}

/// Sweeps until one makes no progress, at most `max_iter`. Returns the objective after each sweep
/// and the orders the sweeps visited the groups in.
fn sweeps(
    eng: &mut Engine<'_>,
    warm: &mut [Option<LapSolution>],
    max_iter: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<Vec<usize>>), MatchError> {
    let groups = eng.lay.groups;
    // The objective changes by exactly the gain of the group that moved, unless a parameter has
    // two axes in one group (its cost then holds the old permutation on the other axis): track
    // it instead of gathering every parameter after each sweep, which cost as much as the
    // sweeps themselves on ResNet-50.
    let exact_gains = groups.iter().all(|group| {
        let ms = &group.members;
        ms.iter()
            .all(|&(p, ax)| ms.iter().all(|&(q, bx)| q != p || bx == ax))
    });
    let mut tracked = if exact_gains { eng.objective()? } else { 0.0 };
    let mut history = Vec::new();
    let mut orders = Vec::new();
    let mut rng = SplitMix64(seed);
    for _ in 0..max_iter {
        let order = rng.permutation(groups.len());
        let mut progress = false;
        for &g in &order {
            if let Some(gain) = step(eng, g, &mut warm[g])? {
                tracked += gain;
                progress = true;
            }
        }
        history.push(if exact_gains {
            tracked
        } else {
            eng.objective()?
        });
        orders.push(order);
        if !progress {
            break;
        }
    }
    Ok((history, orders))
}

/// Solves group `g` with the others fixed, warm from `warm` (which it replaces), and keeps the
/// new permutation if it improves the objective. Returns the gain when it does.
fn step(
    eng: &mut Engine<'_>,
    g: usize,
    warm: &mut Option<LapSolution>,
) -> Result<Option<f64>, MatchError> {
    let n = eng.lay.groups[g].size;
    eng.refresh(g)?;
    let (c, perm) = (&eng.costs[g], &eng.perms[g]);
    let old_l: f64 = (0..n).map(|i| c[i * n + perm[i]] as f64).sum();
    let r2c: Vec<i64>;
    let ws = match warm.as_ref() {
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
    let sol = eng.assign(g, c, n, ws)?;
    let mut gain = None;
    if sol.objective > old_l + 1e-12 {
        gain = Some(sol.objective - old_l);
        let old = std::mem::replace(&mut eng.perms[g], sol.col_ind.clone());
        let moved: Vec<usize> = (0..n).filter(|&i| old[i] != eng.perms[g][i]).collect();
        eng.propagate(g, &old, &moved)?;
    }
    *warm = Some(sol);
    eng.release(g);
    Ok(gain)
}

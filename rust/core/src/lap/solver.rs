//! The Jonker-Volgenant phases on one `n x m` problem with `n <= m`, in minimisation sense:
//! column reduction and reduction transfer (or a warm start) and augmenting row reduction here,
//! then Dijkstra shortest augmenting paths for the rows still free (`paths`), helped on
//! tie-heavy matrices by augmenting paths through tight pairs (`tight`). `super::solve` orients
//! the problem and `super::dispatch` picks the kernels; the module doc of `lap` states the
//! conventions. Every method is `#[inline(always)]` so that it is compiled into the AVX2 entry
//! point of `dispatch`.
use super::cands::{self, Candidates, Min2};
#[cfg(target_arch = "x86_64")]
use super::kernels::avx2;
use super::kernels::{
    check_row, column_min_update, cost, dijkstra_init, dijkstra_scan, finite_absmax, row_min2,
    Argmin, RowCheck,
};
use super::{CostValue, InternalWarm, ARR_ROUNDS, ARR_VISITS_PER_ROW, FREE, HUGE, WARM_TRUST};
use crate::error::LapError;

mod paths;
mod tight;

#[cfg(test)]
pub(super) use paths::FORCE_TIGHT;

/// The column of each row and the column potentials, or `None` when the matrix must be scaled
/// first (see [`Solver::run`]).
pub(super) type Solved = Option<(Vec<usize>, Vec<f64>)>;

/// Solver state for an `n x m` problem with `n <= m`, in minimisation sense.
///
/// `AVX2` selects the intrinsic kernels; it is true only in `dispatch::solve_avx2`, which runs
/// after the CPU was checked.
pub(super) struct Solver<'a, T: CostValue, const MAX: bool, const AVX2: bool> {
    c: &'a [T],
    n: usize,
    m: usize,
    v: Vec<f64>,
    /// Column of each row.
    x: Vec<usize>,
    /// Row of each column.
    y: Vec<usize>,
    /// Candidate lists, on matrices wide enough for them to pay.
    cands: Option<Candidates>,
    /// A finite entry above [`HUGE`] was seen.
    huge: bool,
    /// Largest magnitude of a finite entry (measured by the warm initialisation only).
    absmax: f64,
    /// Largest magnitude of the warm start's column potentials, as the solver starts from them.
    warm_mag: f64,
    /// The unassigned columns, increasing (kept from the augmenting row reduction on): where
    /// several columns tie for a row's minimum, a free one among them ends the row's search.
    free_cols: Vec<usize>,
}

impl<'a, T: CostValue, const MAX: bool, const AVX2: bool> Solver<'a, T, MAX, AVX2> {
    #[inline(always)]
    fn row_min2(&self, i: usize) -> (f64, usize, f64) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: AVX2 was detected before this solver was built; v has length m.
            return unsafe { avx2::row_min2::<T, MAX>(self.row(i), &self.v) };
        }
        row_min2::<T, MAX>(self.row(i), &self.v)
    }

    /// The two cheapest columns of row `i` under the current potentials. `j2` is `FREE` when it
    /// was not determined (dense pass); `m2` always is.
    #[inline(always)]
    fn min2(&mut self, i: usize) -> Min2 {
        let row = self.row(i);
        if let Some(c) = self.cands.as_mut() {
            if let Some(q) = c.query(i, &self.v) {
                return q;
            }
            return c.build_row::<T, MAX>(i, row, &self.v);
        }
        let (m1, j1, m2) = self.row_min2(i);
        (m1, j1, m2, FREE)
    }

    #[inline(always)]
    fn dijkstra_init(&self, i: usize, dd: &mut [f64]) -> Argmin {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: as in `row_min2`; dd has length m.
            return unsafe { avx2::dijkstra_init::<T, MAX>(self.row(i), &self.v, dd) };
        }
        dijkstra_init::<T, MAX>(self.row(i), &self.v, dd)
    }

    #[inline(always)]
    fn dijkstra_scan(&self, i: usize, dd: &mut [f64], h: f64) -> Argmin {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: as in `row_min2`; dd has length m.
            return unsafe { avx2::dijkstra_scan::<T, MAX>(self.row(i), &self.v, dd, h) };
        }
        dijkstra_scan::<T, MAX>(self.row(i), &self.v, dd, h)
    }

    #[inline(always)]
    pub(super) fn new(c: &'a [T], n: usize, m: usize) -> Self {
        debug_assert!(n <= m && c.len() == n * m);
        Solver {
            c,
            n,
            m,
            v: vec![0.0; m],
            x: vec![FREE; n],
            y: vec![FREE; m],
            cands: (m >= cands::MIN_COLS).then(|| Candidates::new(n, m)),
            huge: false,
            absmax: 0.0,
            warm_mag: 0.0,
            free_cols: Vec::new(),
        }
    }

    #[inline(always)]
    fn row(&self, i: usize) -> &'a [T] {
        &self.c[i * self.m..(i + 1) * self.m]
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f64 {
        cost::<T, MAX>(self.c[i * self.m + j])
    }

    /// Returns the column of each row and the column potentials; `None` when a finite entry is
    /// so large (above [`HUGE`]) that the differences the algorithm takes could overflow: the
    /// caller then solves a copy scaled by a power of two.
    #[inline(always)]
    pub(super) fn run(mut self, warm: Option<InternalWarm>) -> Result<Solved, LapError> {
        // Each initialisation validates every row in the pass that first reads it, while the row is
        // in cache: a separate validation pass would cost as much as a warm re-solve.
        let mut free = match &warm {
            Some(w) => self.warm_init(w)?,
            None => self.cold_init()?,
        };
        if self.huge {
            return Ok(None);
        }
        // The scale of the matrix is known only now that every row was read. Potentials far larger
        // than the entries would swamp them in rounding (a solution of the matrix times 1e16
        // reused on the matrix itself gave a wrong optimum and a wrong certificate): start cold.
        if warm.is_some() && self.warm_mag > WARM_TRUST * self.absmax {
            self.reset();
            free = self.cold_init()?;
        }
        self.free_cols = (0..self.m).filter(|&j| self.y[j] == FREE).collect();
        let at_ties = self.augmenting_row_reduction(&mut free, ARR_ROUNDS)?;
        self.shortest_augmenting_paths(free, at_ties > 0)?;
        Ok(Some((self.x, self.v)))
    }

    /// Column `j`, free until now, is taken.
    #[inline(always)]
    fn take_free(&mut self, j: usize) {
        if let Ok(k) = self.free_cols.binary_search(&j) {
            self.free_cols.remove(k);
        }
    }

    /// The first free column whose reduced cost in row `i` is `umin` (the row's minimum).
    #[inline(always)]
    fn free_at_row_min(&self, i: usize, umin: f64) -> Option<usize> {
        let row = self.row(i);
        let v = &self.v;
        self.free_cols
            .iter()
            .copied()
            .find(|&j| cost::<T, MAX>(row[j]) - v[j] == umin)
    }

    /// Column reduction when square; otherwise every row starts free with zero potentials.
    #[inline(always)]
    fn cold_init(&mut self) -> Result<Vec<usize>, LapError> {
        if self.n == self.m {
            return self.column_reduction();
        }
        for i in 0..self.n {
            self.validate_row(i)?;
        }
        Ok((0..self.n).collect())
    }

    /// Forgets a warm initialisation.
    fn reset(&mut self) {
        self.v.fill(0.0);
        self.x.fill(FREE);
        self.y.fill(FREE);
        if let Some(c) = self.cands.as_mut() {
            c.invalidate();
        }
    }

    /// NaN, or the infinity that cannot mean "forbidden", anywhere in row `i` is an error. Notes
    /// a finite entry above [`HUGE`].
    #[inline(always)]
    fn validate_row(&mut self, i: usize) -> Result<(), LapError> {
        let bad = if MAX {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
        match check_row(self.row(i), bad, HUGE) {
            RowCheck::Valid { huge } => {
                self.huge |= huge;
                Ok(())
            }
            RowCheck::Invalid(j) => Err(LapError::InvalidEntry {
                row: i,
                col: j,
                value: self.c[i * self.m + j].to_f64(),
                allowed: if MAX { "-inf" } else { "+inf" },
            }),
        }
    }

    /// Column reduction (row-major) and reduction transfer. Returns the free rows.
    #[inline(always)]
    fn column_reduction(&mut self) -> Result<Vec<usize>, LapError> {
        let (n, m) = (self.n, self.m);
        let mut colmin = vec![f64::INFINITY; m];
        let mut colarg = vec![0.0; m];
        for i in 0..n {
            self.validate_row(i)?;
            column_min_update::<T, MAX>(self.row(i), &mut colmin, &mut colarg, i as f64);
            // A column whose minimum is tied goes to its diagonal row when that row is among the
            // ties (else to the first): a constant matrix is solved here, as the identity (what
            // scipy returns), instead of leaving every row but one to the later phases.
            if self.at(i, i) == colmin[i] {
                colarg[i] = i as f64;
            }
        }
        if colmin.contains(&f64::INFINITY) {
            return Err(LapError::Infeasible);
        }
        let mut matches = vec![0u32; n];
        // Reverse order, as in the original: the last columns claim their row first.
        for j in (0..m).rev() {
            let i = colarg[j] as usize;
            self.v[j] = colmin[j];
            matches[i] += 1;
            if matches[i] == 1 {
                self.x[i] = j;
                self.y[j] = i;
            } else if self.v[j] < self.v[self.x[i]] {
                let j1 = self.x[i];
                self.x[i] = j;
                self.y[j] = i;
                self.y[j1] = FREE;
            }
        }
        // Reduction transfer: a row matched once hands its slack to its column, so that the
        // column is less attractive to the free rows of the next phase.
        let mut free = Vec::new();
        for i in 0..n {
            match matches[i] {
                0 => free.push(i),
                1 => {
                    let j1 = self.x[i];
                    // Dense: most rows are never visited again, so building their candidate
                    // lists here would cost more than it saves.
                    let (m1, a1, m2) = self.row_min2(i);
                    let others = if a1 == j1 { m2 } else { m1 };
                    if others.is_finite() {
                        self.v[j1] -= others;
                    }
                }
                _ => {}
            }
        }
        Ok(free)
    }

    /// Starts from the warm column potentials: non-positive and zero where unmatched in a wide
    /// problem, centred in a square one. Records their magnitude for the trust check of `run`.
    #[inline(always)]
    fn warm_potentials(&mut self, w: &InternalWarm) {
        let m = self.m;
        self.v.copy_from_slice(&w.v);
        if self.n < m {
            let mut used = vec![false; m];
            for &j in &w.row_to_col {
                if j >= 0 {
                    used[j as usize] = true;
                }
            }
            for j in 0..m {
                if !used[j] || self.v[j] > 0.0 {
                    self.v[j] = 0.0;
                }
            }
        } else {
            // A common offset means nothing in a square problem (the row potentials absorb it);
            // centred, potentials that drifted over many warm re-solves keep their precision.
            let (lo, hi) = self
                .v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let mid = lo / 2.0 + hi / 2.0;
            self.v.iter_mut().for_each(|x| *x -= mid);
        }
        self.warm_mag = self.v.iter().fold(0.0, |a: f64, x| a.max(x.abs()));
    }

    /// Keeps the warm potentials and every previous pair that is still tight. Returns the free rows.
    #[inline(always)]
    fn warm_init(&mut self, w: &InternalWarm) -> Result<Vec<usize>, LapError> {
        let (n, m) = (self.n, self.m);
        let wide = n < m;
        self.warm_potentials(w);
        // In a wide problem, a column that loses its row must get back a zero potential, which may
        // in turn make other previous pairs non-tight; a few rounds settle it, else start cold.
        for attempt in 0..4 {
            self.x.fill(FREE);
            self.y.fill(FREE);
            let mut free = Vec::new();
            for i in 0..n {
                if attempt == 0 {
                    self.validate_row(i)?;
                    self.absmax = self.absmax.max(finite_absmax(self.row(i)));
                }
                let p = w.row_to_col[i];
                if p >= 0 {
                    let p = p as usize;
                    let (m1, j1, m2) = self.row_min2(i);
                    let rp = self.at(i, p) - self.v[p];
                    // A forbidden pair is never kept (a row whose entries are all forbidden
                    // would otherwise keep one).
                    if rp <= m1 && rp < f64::INFINITY {
                        self.x[i] = p;
                        self.y[p] = i;
                        // Reduction transfer, as after the column reduction: hand the row's slack
                        // to its column so that the rows left free are less drawn to it.
                        let others = if j1 == p { m2 } else { m1 };
                        if !wide && others.is_finite() && others > rp {
                            self.v[p] -= others - rp;
                        }
                        continue;
                    }
                }
                free.push(i);
            }
            if !wide {
                return Ok(free);
            }
            let mut changed = false;
            for j in 0..m {
                if self.y[j] == FREE && self.v[j] != 0.0 {
                    self.v[j] = 0.0;
                    changed = true;
                }
            }
            if !changed {
                return Ok(free);
            }
            if let Some(c) = self.cands.as_mut() {
                c.invalidate();
            }
        }
        self.v.fill(0.0);
        self.x.fill(FREE);
        self.y.fill(FREE);
        Ok((0..n).collect())
    }

    /// Augmenting row reduction (Jonker-Volgenant), `rounds` times over the free rows. Each visit
    /// sends a free row to its cheapest column and lowers that column's potential by the gap to
    /// the row's second choice, evicting the previous owner.
    ///
    /// The epsilon fix: an eviction whose potential change is lost to rounding (the gap is below
    /// the potential's ulp) waits for the next round instead of being revisited at once;
    /// otherwise two rows can trade a column forever. At an exact tie the row takes a free tied
    /// column or is left to the shortest paths (see the tie branch). The cycle guard bounds the
    /// visits of a round; rows left over go to the shortest paths.
    #[inline(always)]
    fn augmenting_row_reduction(
        &mut self,
        free: &mut Vec<usize>,
        rounds: usize,
    ) -> Result<usize, LapError> {
        // Rows left to the shortest paths at a tie.
        let mut rest = Vec::new();
        for _ in 0..rounds {
            if free.is_empty() {
                break;
            }
            let mut next = Vec::new();
            let mut budget = ARR_VISITS_PER_ROW.saturating_mul(self.n);
            let mut k = 0;
            while k < free.len() {
                if budget == 0 {
                    next.extend_from_slice(&free[k..]);
                    break;
                }
                budget -= 1;
                let i = free[k];
                k += 1;
                let (umin, mut j1, usub, _) = self.min2(i);
                if umin == f64::INFINITY {
                    return Err(LapError::Infeasible);
                }
                let mut i0 = self.y[j1];
                let mut strict = false;
                if umin < usub {
                    if usub.is_finite() {
                        let nv = self.v[j1] - (usub - umin);
                        if nv < self.v[j1] {
                            self.v[j1] = nv;
                            strict = true;
                        }
                    }
                } else if i0 != FREE {
                    // Tie: other columns are as cheap. A free one among them takes the row without
                    // evicting anyone. Otherwise the row waits for the shortest paths, which find
                    // a way through the ties; evicting at a tie (the original rule) moves no
                    // potential, and on matrices of few distinct values rows bounced between tied
                    // columns for whole rounds (a 2000x2000 0/1 matrix took seconds).
                    match self.free_at_row_min(i, umin) {
                        Some(j) => (j1, i0) = (j, FREE),
                        None => {
                            rest.push(i);
                            continue;
                        }
                    }
                }
                if i0 == FREE {
                    self.take_free(j1);
                }
                self.x[i] = j1;
                self.y[j1] = i;
                if i0 != FREE {
                    self.x[i0] = FREE;
                    if strict {
                        k -= 1;
                        free[k] = i0;
                    } else {
                        next.push(i0);
                    }
                }
            }
            *free = next;
        }
        let at_ties = rest.len();
        free.append(&mut rest);
        Ok(at_ties)
    }
}

//! Jonker-Volgenant linear assignment.
//!
//! `solve` finds the assignment of the smaller side of a dense cost matrix that minimises (or
//! maximises) the total cost, with the dual potentials that certify it. The algorithm is the one of
//! Jonker and Volgenant (1987): column reduction, reduction transfer, two rounds of augmenting row
//! reduction, and Dijkstra shortest augmenting paths for the rows still free. Rectangular problems
//! are solved without padding: the wide orientation skips the column reduction (only the rows must
//! all be matched, so column potentials start at zero and stay non-positive), the tall one is
//! solved on its transpose.
//!
//! Conventions (for minimisation): reduced costs `c[i][j] - u[i] - v[j]` are non-negative and zero
//! on the assigned pairs; in a rectangular problem the potential of every unassigned element of
//! the larger side is zero and the others are non-positive. When maximising, the costs are negated
//! internally and the potentials returned are those of the original problem: `c - u - v <= 0`.
//!
//! Forbidden pairs are `+inf` (or `-inf` when maximising) and stay infinite all the way through:
//! potentials are kept finite instead of substituting a large sentinel cost.

// Index loops over lanes, rows and columns that address several arrays at once read better than
// zipped iterators here.
#![allow(clippy::needless_range_loop)]

mod cands;
mod kernels;

use crate::error::LapError;
use cands::{Candidates, Min2};
use kernels::{column_min_update, cost, dijkstra_init, dijkstra_scan, find_invalid, row_min2};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Element types the solver reads without conversion (`f32`, `f64`). Potentials are always `f64`.
pub trait CostValue: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The value as `f64` (exact for `f32`).
    fn to_f64(self) -> f64;

    /// Four consecutive values as `f64` lanes.
    ///
    /// # Safety
    /// The CPU supports AVX (the caller runs inside a function compiled for AVX2 after checking
    /// it), and the four values at `p..p+4` are readable (no alignment needed).
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m256d;
}

impl CostValue for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }

    /// An unaligned load of four `f64`.
    ///
    /// # Safety
    /// As [`CostValue::load4`]: AVX available, `p..p+4` readable.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m256d {
        std::arch::x86_64::_mm256_loadu_pd(p)
    }
}

impl CostValue for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }

    /// An unaligned load of four `f32`, widened exactly to `f64`.
    ///
    /// # Safety
    /// As [`CostValue::load4`]: AVX available, `p..p+4` readable.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m256d {
        use std::arch::x86_64::{_mm256_cvtps_pd, _mm_loadu_ps};
        _mm256_cvtps_pd(_mm_loadu_ps(p))
    }
}

/// Marks an unassigned row or column in the internal index arrays.
const FREE: usize = usize::MAX;

/// Augmenting row reduction stops a round after this many row visits per row of the problem and
/// leaves the rest to the shortest-path phase (the cycle guard). A round has no polynomial bound of
/// its own: tiny gaps bounce rows between columns for a long time. On uniform 4096x4096 costs the
/// first round ends by itself after about 95 visits per row; with candidate lists a visit costs a
/// few dozen operations, far less than the shortest-path scans it saves, so the guard is loose.
const ARR_VISITS_PER_ROW: usize = 128;

/// Rounds of augmenting row reduction (the original uses two). With candidate lists a round is
/// cheap, and on low-rank costs each further round frees the shortest-path phase of many rows:
/// rank-8 4096x4096 costs take 4.6 s with 4 rounds, 2.8 s with 8 and 1.5 s with 16 (32: 1.75 s).
/// A round stops early once no row is free, so easy matrices never run them all.
const ARR_ROUNDS: usize = 16;

/// An optimal assignment with its certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct LapSolution {
    /// Assigned rows, increasing.
    pub row_ind: Vec<usize>,
    /// `col_ind[k]` is the column assigned to `row_ind[k]`.
    pub col_ind: Vec<usize>,
    /// Total cost of the assignment, summed in `f64` from the input values.
    pub objective: f64,
    /// Row potentials.
    pub u: Vec<f64>,
    /// Column potentials.
    pub v: Vec<f64>,
}

/// A previous solution to start from: the optimum is the same as a cold solve's, reached faster
/// when the matrix changed little. Given in the same orientation and sense as the problem.
#[derive(Debug, Clone, Copy)]
pub struct WarmStart<'a> {
    /// Column of each row, or -1 where the row was unassigned. Length: rows.
    pub row_to_col: &'a [i64],
    /// Row potentials of the previous solution. Length: rows.
    pub u: &'a [f64],
    /// Column potentials of the previous solution. Length: cols.
    pub v: &'a [f64],
}

/// Solves the assignment problem on a row-major `rows x cols` matrix.
///
/// Every row is assigned when `rows <= cols`, every column otherwise. The matrix is read in place
/// when `rows <= cols`; a tall matrix is transposed into a scratch buffer first, because the
/// passes of the algorithm must run along the larger dimension to stay row-major.
///
/// # Errors
/// [`LapError::ShapeMismatch`] when `cost.len() != rows * cols`, [`LapError::InvalidEntry`] on NaN
/// or the infinity that cannot mean "forbidden", [`LapError::Infeasible`] when the forbidden
/// entries leave no complete assignment, [`LapError::BadWarmStart`] when the warm start does not fit.
///
/// # Example
/// ```
/// use rebasin_core::lap::solve;
/// let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
/// let sol = solve(&cost, 3, 3, false, None).unwrap();
/// assert_eq!(sol.col_ind, vec![1, 0, 2]);
/// assert_eq!(sol.objective, 5.0);
/// ```
pub fn solve<T: CostValue>(
    cost: &[T],
    rows: usize,
    cols: usize,
    maximize: bool,
    warm: Option<WarmStart<'_>>,
) -> Result<LapSolution, LapError> {
    let expected = rows.checked_mul(cols).ok_or(LapError::ShapeMismatch {
        len: cost.len(),
        rows,
        cols,
        expected: usize::MAX,
    })?;
    if cost.len() != expected {
        return Err(LapError::ShapeMismatch {
            len: cost.len(),
            rows,
            cols,
            expected,
        });
    }
    if let Some(w) = &warm {
        check_warm(w, rows, cols)?;
    }
    if rows == 0 || cols == 0 {
        return Ok(LapSolution {
            row_ind: Vec::new(),
            col_ind: Vec::new(),
            objective: 0.0,
            u: vec![0.0; rows],
            v: vec![0.0; cols],
        });
    }
    let sign = if maximize { -1.0 } else { 1.0 };

    if rows <= cols {
        let warm = warm.map(|w| InternalWarm {
            row_to_col: w.row_to_col.to_vec(),
            v: w.v.iter().map(|x| sign * x).collect(),
        });
        let (x, v) = dispatch::solve(cost, rows, cols, maximize, warm)?;
        let mut objective = 0.0;
        let mut u = Vec::with_capacity(rows);
        for (i, &j) in x.iter().enumerate() {
            let c = cost[i * cols + j].to_f64();
            objective += c;
            u.push(c - sign * v[j]);
        }
        Ok(LapSolution {
            row_ind: (0..rows).collect(),
            col_ind: x,
            objective,
            u,
            v: v.into_iter().map(|x| sign * x).collect(),
        })
    } else {
        let t = transpose(cost, rows, cols);
        let warm = warm.map(|w| {
            let mut col_to_row = vec![-1i64; cols];
            for (i, &j) in w.row_to_col.iter().enumerate() {
                if j >= 0 {
                    col_to_row[j as usize] = i as i64;
                }
            }
            InternalWarm {
                row_to_col: col_to_row,
                v: w.u.iter().map(|x| sign * x).collect(),
            }
        });
        let (x, w) = dispatch::solve(&t, cols, rows, maximize, warm).map_err(|e| match e {
            LapError::InvalidEntry {
                row,
                col,
                value,
                allowed,
            } => LapError::InvalidEntry {
                row: col,
                col: row,
                value,
                allowed,
            },
            e => e,
        })?;
        // x[j] is the row assigned to column j; report the pairs by increasing row.
        let mut row_to_col = vec![FREE; rows];
        for (j, &i) in x.iter().enumerate() {
            row_to_col[i] = j;
        }
        let mut row_ind = Vec::with_capacity(cols);
        let mut col_ind = Vec::with_capacity(cols);
        let mut objective = 0.0;
        let mut v = vec![0.0; cols];
        for (i, &j) in row_to_col.iter().enumerate() {
            if j != FREE {
                let c = cost[i * cols + j].to_f64();
                row_ind.push(i);
                col_ind.push(j);
                objective += c;
                v[j] = c - sign * w[i];
            }
        }
        Ok(LapSolution {
            row_ind,
            col_ind,
            objective,
            u: w.into_iter().map(|x| sign * x).collect(),
            v,
        })
    }
}

fn check_warm(w: &WarmStart<'_>, rows: usize, cols: usize) -> Result<(), LapError> {
    let bad = |msg: String| Err(LapError::BadWarmStart(msg));
    if w.row_to_col.len() != rows || w.u.len() != rows || w.v.len() != cols {
        return bad(format!(
            "it is for a {}x{} problem but the cost matrix is {rows}x{cols}; pass a solution of a \
             matrix of the same shape",
            w.u.len(),
            w.v.len()
        ));
    }
    let mut seen = vec![false; cols];
    for (i, &j) in w.row_to_col.iter().enumerate() {
        if j < -1 || j >= cols as i64 {
            return bad(format!(
                "row {i} is assigned to column {j}, outside 0..{cols}"
            ));
        }
        if j >= 0 {
            if seen[j as usize] {
                return bad(format!("column {j} is assigned twice"));
            }
            seen[j as usize] = true;
        }
    }
    if w.u.iter().chain(w.v.iter()).any(|x| !x.is_finite()) {
        return bad("its potentials u and v must be finite".to_string());
    }
    Ok(())
}

/// Cache-blocked transpose of a row-major `rows x cols` matrix.
fn transpose<T: CostValue>(a: &[T], rows: usize, cols: usize) -> Vec<T> {
    const B: usize = 32;
    let mut t = Vec::with_capacity(rows * cols);
    // Every element is written below before it is read; fill keeps the code safe and costs one
    // pass over a buffer that is about to be written anyway.
    t.resize(rows * cols, a[0]);
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for i in i0..(i0 + B).min(rows) {
                for j in j0..(j0 + B).min(cols) {
                    t[j * rows + i] = a[i * cols + j];
                }
            }
        }
    }
    t
}

/// A warm start in solver orientation and minimisation sense.
struct InternalWarm {
    row_to_col: Vec<i64>,
    v: Vec<f64>,
}

/// Runtime selection of the widest vector instructions the CPU has. The same generic code is
/// compiled once per instruction set; the wheel stays portable.
mod dispatch {
    use super::{CostValue, InternalWarm, LapError, Solver};

    type Out = Result<(Vec<usize>, Vec<f64>), LapError>;

    pub(super) fn solve<T: CostValue>(
        c: &[T],
        n: usize,
        m: usize,
        maximize: bool,
        warm: Option<InternalWarm>,
    ) -> Out {
        if maximize {
            solve_sign::<T, true>(c, n, m, warm)
        } else {
            solve_sign::<T, false>(c, n, m, warm)
        }
    }

    fn solve_sign<T: CostValue, const MAX: bool>(
        c: &[T],
        n: usize,
        m: usize,
        warm: Option<InternalWarm>,
    ) -> Out {
        #[cfg(target_arch = "x86_64")]
        {
            if !portable_forced() && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { solve_avx2::<T, MAX>(c, n, m, warm) };
            }
        }
        Solver::<T, MAX, false>::new(c, n, m).run(warm)
    }

    /// Whether a test asked for the portable kernels on this thread (see `FORCE_PORTABLE`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn portable_forced() -> bool {
        #[cfg(test)]
        return FORCE_PORTABLE.with(|f| f.get());
        #[cfg(not(test))]
        false
    }

    #[cfg(test)]
    thread_local! {
        /// Set by tests to run whole solves on the portable kernels on a CPU with AVX2, so that
        /// the two can be compared (otherwise the portable path never runs there).
        pub(super) static FORCE_PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The solver compiled for AVX2 (its kernels inlined into this function take the intrinsic
    /// paths).
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn solve_avx2<T: CostValue, const MAX: bool>(
        c: &[T],
        n: usize,
        m: usize,
        warm: Option<InternalWarm>,
    ) -> Out {
        Solver::<T, MAX, true>::new(c, n, m).run(warm)
    }
}

/// One shortest-path search step: column `col` (assigned to `row`) was scanned at distance `d`,
/// relaxing the other columns with offset `h`.
#[derive(Clone, Copy)]
struct Step {
    col: usize,
    row: usize,
    h: f64,
    d: f64,
}

/// Solver state for an `n x m` problem with `n <= m`, in minimisation sense.
///
/// `AVX2` selects the intrinsic kernels; it is true only in `dispatch::solve_avx2`, which runs
/// after the CPU was checked.
struct Solver<'a, T: CostValue, const MAX: bool, const AVX2: bool> {
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
}

impl<'a, T: CostValue, const MAX: bool, const AVX2: bool> Solver<'a, T, MAX, AVX2> {
    #[inline(always)]
    fn row_min2(&self, i: usize) -> (f64, usize, f64) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: AVX2 was detected before this solver was built; v has length m.
            return unsafe { kernels::avx2::row_min2::<T, MAX>(self.row(i), &self.v) };
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
    fn dijkstra_init(&self, i: usize, dd: &mut [f64]) -> (f64, usize) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: as in `row_min2`; dd has length m.
            return unsafe { kernels::avx2::dijkstra_init::<T, MAX>(self.row(i), &self.v, dd) };
        }
        dijkstra_init::<T, MAX>(self.row(i), &self.v, dd)
    }

    #[inline(always)]
    fn dijkstra_scan(&self, i: usize, dd: &mut [f64], h: f64) -> (f64, usize) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: as in `row_min2`; dd has length m.
            return unsafe { kernels::avx2::dijkstra_scan::<T, MAX>(self.row(i), &self.v, dd, h) };
        }
        dijkstra_scan::<T, MAX>(self.row(i), &self.v, dd, h)
    }

    #[inline(always)]
    fn new(c: &'a [T], n: usize, m: usize) -> Self {
        debug_assert!(n <= m && c.len() == n * m);
        Solver {
            c,
            n,
            m,
            v: vec![0.0; m],
            x: vec![FREE; n],
            y: vec![FREE; m],
            cands: (m >= cands::MIN_COLS).then(|| Candidates::new(n, m)),
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

    /// Returns the column of each row and the column potentials.
    #[inline(always)]
    fn run(mut self, warm: Option<InternalWarm>) -> Result<(Vec<usize>, Vec<f64>), LapError> {
        // Each initialisation validates every row in the pass that first reads it, while the row is
        // in cache: a separate validation pass would cost as much as a warm re-solve.
        let mut free = match warm {
            Some(w) => self.warm_init(&w)?,
            None if self.n == self.m => self.column_reduction()?,
            None => {
                for i in 0..self.n {
                    self.validate_row(i)?;
                }
                (0..self.n).collect()
            }
        };
        self.augmenting_row_reduction(&mut free, ARR_ROUNDS)?;
        self.shortest_augmenting_paths(&free)?;
        Ok((self.x, self.v))
    }

    /// NaN, or the infinity that cannot mean "forbidden", anywhere in row `i` is an error.
    #[inline(always)]
    fn validate_row(&self, i: usize) -> Result<(), LapError> {
        let bad = if MAX {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
        match find_invalid(self.row(i), bad) {
            None => Ok(()),
            Some(j) => Err(LapError::InvalidEntry {
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

    /// Keeps the warm potentials and every previous pair that is still tight. Returns the free rows.
    #[inline(always)]
    fn warm_init(&mut self, w: &InternalWarm) -> Result<Vec<usize>, LapError> {
        let (n, m) = (self.n, self.m);
        let wide = n < m;
        self.v.copy_from_slice(&w.v);
        if wide {
            // Column potentials must stay non-positive, and zero where the column is unmatched.
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
        }
        // In a wide problem, a column that loses its row must get back a zero potential, which may
        // in turn make other previous pairs non-tight; a few rounds settle it, else start cold.
        for attempt in 0..4 {
            self.x.fill(FREE);
            self.y.fill(FREE);
            let mut free = Vec::new();
            for i in 0..n {
                if attempt == 0 {
                    self.validate_row(i)?;
                }
                let p = w.row_to_col[i];
                if p >= 0 {
                    let p = p as usize;
                    let (m1, j1, m2) = self.row_min2(i);
                    let rp = self.at(i, p) - self.v[p];
                    if rp <= m1 {
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
    /// the potential's ulp) is treated as a tie, whose evicted row waits for the next round
    /// instead of being revisited at once; otherwise two rows can trade a column forever.
    /// The cycle guard bounds the visits of a round; rows left over go to the shortest paths.
    #[inline(always)]
    fn augmenting_row_reduction(
        &mut self,
        free: &mut Vec<usize>,
        rounds: usize,
    ) -> Result<(), LapError> {
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
                let (umin, mut j1, usub, j2) = self.min2(i);
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
                    // Tie: another column is as cheap; take it instead of evicting.
                    let row = self.row(i);
                    let j2 = if j2 != FREE {
                        j2
                    } else {
                        (0..self.m)
                            .find(|&j| j != j1 && cost::<T, MAX>(row[j]) - self.v[j] == umin)
                            .expect("a tied minimum has a second column")
                    };
                    j1 = j2;
                    i0 = self.y[j2];
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
        Ok(())
    }

    /// Dijkstra shortest augmenting paths from each free row, on dense vectorised passes.
    #[inline(always)]
    fn shortest_augmenting_paths(&mut self, free: &[usize]) -> Result<(), LapError> {
        let m = self.m;
        let mut dd = vec![0.0; m];
        let mut steps: Vec<Step> = Vec::new();
        let mut path: Vec<(usize, usize)> = Vec::new();
        for &f in free {
            steps.clear();
            let (mut dmin, mut jmin) = self.dijkstra_init(f, &mut dd);
            loop {
                if dmin == f64::INFINITY {
                    return Err(LapError::Infeasible);
                }
                let i = self.y[jmin];
                if i == FREE {
                    break;
                }
                let h = (self.at(i, jmin) - self.v[jmin]) - dmin;
                steps.push(Step {
                    col: jmin,
                    row: i,
                    h,
                    d: dmin,
                });
                dd[jmin] = f64::NEG_INFINITY;
                (dmin, jmin) = self.dijkstra_scan(i, &mut dd, h);
            }
            // Trace the path back before the potentials move (predecessors are recomputed from them).
            path.clear();
            let mut j = jmin;
            let mut upto = steps.len();
            loop {
                match self.pred_of(f, j, &steps[..upto]) {
                    None => {
                        path.push((f, j));
                        break;
                    }
                    Some(s) => {
                        path.push((steps[s].row, j));
                        j = steps[s].col;
                        upto = s;
                    }
                }
            }
            for s in &steps {
                // `s.d <= dmin` in exact arithmetic; never raise a potential on rounding, which
                // would break the bounds of the candidate lists.
                let delta = s.d - dmin;
                if delta < 0.0 {
                    self.v[s.col] += delta;
                }
            }
            for &(i, j) in &path {
                self.x[i] = j;
                self.y[j] = i;
            }
        }
        Ok(())
    }

    /// The step whose row last lowered the distance of column `j` (None: the start row `f`),
    /// recomputed with exactly the arithmetic of `dijkstra_init` and `dijkstra_scan`.
    #[inline(always)]
    fn pred_of(&self, f: usize, j: usize, steps: &[Step]) -> Option<usize> {
        let vj = self.v[j];
        let mut best = self.at(f, j) - vj;
        let mut pred = None;
        for (s, st) in steps.iter().enumerate() {
            let t = (self.at(st.row, j) - vj) - st.h;
            if t < best {
                best = t;
                pred = Some(s);
            }
        }
        pred
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parity_tests;

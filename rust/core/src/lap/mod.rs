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
//!
//! Scale: the pass that validates each row also flags entries near the float maximum, which are
//! then solved on a copy scaled by a power of two (see `HUGE`); a warm start is trusted only when
//! its potentials are of the matrix's scale (see `WARM_TRUST`), otherwise the solve starts cold.
//! Either way the optimum is the cold one.
//!
//! Ties (matrices of few distinct values): the column reduction gives a tied column to its
//! diagonal row when it can (a constant matrix is the identity, as in scipy); the row reduction
//! takes a free column among a row's tied minima or leaves the row to later phases instead of
//! evicting at a tie; when many rows were left so, they are matched along alternating paths of
//! tight pairs first (`solver::tight`); a shortest-path search ends at a free column among the
//! columns tied at the smallest distance (as in scipy). Breaking ties blindly made such matrices
//! cubic.

// Index loops over lanes, rows and columns that address several arrays at once read better than
// zipped iterators here.
#![allow(clippy::needless_range_loop)]

mod cands;
mod dispatch;
mod kernels;
mod solver;

use crate::error::LapError;

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

/// Finite entries above this magnitude are solved on a copy scaled by `2^-RESCALE_EXP`: the
/// algorithm subtracts potentials from costs and adds path lengths, which on entries near the
/// float maximum overflow to infinity and turn allowed pairs into forbidden ones (a 2x2 matrix of
/// +-1.7e308 was called infeasible). `2^960` leaves a factor `2^64` of headroom: potentials stay
/// within the number of rows times twice the largest entry.
const HUGE: f64 = f64::from_bits((1023 + 960) << 52); // 2^960

/// The scaling exponent for matrices with entries above [`HUGE`]: scaled entries stay below
/// `2^896`, and only entries below `2^-894` (irrelevant beside entries above `2^960`) lose bits.
const RESCALE_EXP: i32 = 128;

/// A warm start is used only when its column potentials (centred in a square problem) are at most
/// this many times the largest finite entry. Optimal potentials of a matrix without forbidden
/// entries span at most its range (twice its largest entry), so a solution of the same or a
/// similar matrix always passes; potentials far larger than the entries would leave the costs
/// below their rounding error (a solution of a matrix scaled by 1e16 gave a wrong optimum). Past
/// the bound the solve starts cold: slower, never wrong. `2^10` costs at most 10 bits of the
/// 53, well inside the tolerance of the certificate.
const WARM_TRUST: f64 = 1024.0;

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
///
/// Any warm start that fits the shape is safe: its potentials are used only when they are at most
/// 1024 times the largest finite entry (centred, in a square problem), and its pairs only
/// where they are still tight and allowed; otherwise the solve starts cold.
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
    check_shape(cost.len(), rows, cols)?;
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
        solve_in_place(cost, rows, cols, maximize, sign, warm)
    } else {
        solve_transposed(cost, rows, cols, maximize, sign, warm)
    }
}

/// `cost.len()` must be `rows * cols` (and that product must not overflow).
fn check_shape(len: usize, rows: usize, cols: usize) -> Result<(), LapError> {
    let expected = rows.checked_mul(cols).ok_or(LapError::ShapeMismatch {
        len,
        rows,
        cols,
        expected: usize::MAX,
    })?;
    if len != expected {
        return Err(LapError::ShapeMismatch {
            len,
            rows,
            cols,
            expected,
        });
    }
    Ok(())
}

/// The answer of the solver in its orientation (`n <= m`) and minimisation sense: the column of
/// each row and the potentials of rows and columns.
struct Oriented {
    x: Vec<usize>,
    u: Vec<f64>,
    v: Vec<f64>,
}

/// Solves an `n x m` problem with `n <= m` (read in place), with the rescaled retry for entries
/// above [`HUGE`]. The potentials are in minimisation sense.
fn solve_oriented<T: CostValue>(
    c: &[T],
    n: usize,
    m: usize,
    maximize: bool,
    warm: Option<InternalWarm>,
) -> Result<Oriented, LapError> {
    let sign = if maximize { -1.0 } else { 1.0 };
    let retry = warm.clone();
    if let Some((x, v)) = dispatch::solve(c, n, m, maximize, warm)? {
        let u = (0..n).map(|i| sign * c[i * m + x[i]].to_f64() - v[x[i]]);
        return Ok(Oriented {
            u: u.collect(),
            x,
            v,
        });
    }
    // Power-of-two scaling is exact: the scaled problem has the same optimal assignments.
    let down = 2f64.powi(-RESCALE_EXP);
    let scaled: Vec<f64> = c.iter().map(|a| a.to_f64() * down).collect();
    let retry = retry.map(|w| InternalWarm {
        row_to_col: w.row_to_col,
        v: w.v.iter().map(|a| a * down).collect(),
    });
    let (x, mut v) = dispatch::solve(&scaled, n, m, maximize, retry)?
        .expect("scaled entries are below 2^896, far from HUGE");
    let mut u: Vec<f64> = (0..n)
        .map(|i| sign * scaled[i * m + x[i]] - v[x[i]])
        .collect();
    if n == m {
        balance(&mut u, &mut v);
    }
    let up = 2f64.powi(RESCALE_EXP);
    u.iter_mut().chain(v.iter_mut()).for_each(|a| *a *= up);
    Ok(Oriented { x, u, v })
}

/// Shifts `u` up and `v` down by one amount (which keeps every reduced cost of a square problem)
/// so that the largest magnitude among them is smallest: potentials of entries near the float
/// maximum then stay finite when scaled back whenever a finite certificate exists at that spread.
fn balance(u: &mut [f64], v: &mut [f64]) {
    let range = |x: &[f64]| {
        x.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                (a.min(y), b.max(y))
            })
    };
    let ((ul, uh), (vl, vh)) = (range(u), range(v));
    let (mu, hu, mv, hv) = (
        (ul + uh) / 2.0,
        (uh - ul) / 2.0,
        (vl + vh) / 2.0,
        (vh - vl) / 2.0,
    );
    // With `a = mu + t`, the largest magnitude is `max(|a| + hu, |s - a| + hv)` for `s = mu + mv`;
    // its minimum lies where the two meet, clamped to the segment between 0 and s.
    let s = mu + mv;
    let worst = |a: f64| (a.abs() + hu).max((s - a).abs() + hv);
    let (lo, hi) = (s.min(0.0), s.max(0.0));
    let a = [0.0, s, (s + hv - hu) / 2.0, (s - hv + hu) / 2.0]
        .into_iter()
        .map(|a| a.clamp(lo, hi))
        .min_by(|&a, &b| worst(a).total_cmp(&worst(b)))
        .unwrap_or(mu);
    let t = a - mu;
    u.iter_mut().for_each(|x| *x += t);
    v.iter_mut().for_each(|x| *x -= t);
}

/// `rows <= cols`, neither zero: the matrix is already in solver orientation and is read in place.
/// `sign` is `-1` when maximising: the solver works on negated costs and potentials.
fn solve_in_place<T: CostValue>(
    cost: &[T],
    rows: usize,
    cols: usize,
    maximize: bool,
    sign: f64,
    warm: Option<WarmStart<'_>>,
) -> Result<LapSolution, LapError> {
    let warm = warm.map(|w| InternalWarm {
        row_to_col: w.row_to_col.to_vec(),
        v: w.v.iter().map(|x| sign * x).collect(),
    });
    let Oriented { x, u, v } = solve_oriented(cost, rows, cols, maximize, warm)?;
    let objective = x
        .iter()
        .enumerate()
        .map(|(i, &j)| cost[i * cols + j].to_f64())
        .sum();
    Ok(LapSolution {
        row_ind: (0..rows).collect(),
        col_ind: x,
        objective,
        u: u.into_iter().map(|x| sign * x).collect(),
        v: v.into_iter().map(|x| sign * x).collect(),
    })
}

/// `rows > cols`, neither zero: the solver runs on the transpose (its rows are our columns), and
/// the warm start, the errors and the answer are carried across the transpose both ways.
fn solve_transposed<T: CostValue>(
    cost: &[T],
    rows: usize,
    cols: usize,
    maximize: bool,
    sign: f64,
    warm: Option<WarmStart<'_>>,
) -> Result<LapSolution, LapError> {
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
    let Oriented { x, u, v: w } =
        solve_oriented(&t, cols, rows, maximize, warm).map_err(|e| match e {
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
    for (i, &j) in row_to_col.iter().enumerate() {
        if j != FREE {
            row_ind.push(i);
            col_ind.push(j);
            objective += cost[i * cols + j].to_f64();
        }
    }
    Ok(LapSolution {
        row_ind,
        col_ind,
        objective,
        u: w.into_iter().map(|x| sign * x).collect(),
        v: u.into_iter().map(|x| sign * x).collect(),
    })
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
#[derive(Clone)]
struct InternalWarm {
    row_to_col: Vec<i64>,
    v: Vec<f64>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parity_tests;

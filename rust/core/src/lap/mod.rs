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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parity_tests;

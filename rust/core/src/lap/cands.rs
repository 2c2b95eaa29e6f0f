//! Per-row candidate lists: the `K` cheapest columns of each row with their costs, and a lower
//! bound on the reduced cost of every other column of the row.
//!
//! Why: on a large matrix each augmenting-row-reduction visit reads a whole row from memory to find
//! its two cheapest columns, and a round makes about a hundred visits per row. Column potentials
//! only ever decrease once the lists are built (reduction transfer, row reduction and shortest
//! paths all lower them), so a reduced cost `c[i][j] - v[j]` only grows, and the bound taken when
//! a list is built stays a valid lower bound for the columns outside it. A visit then looks at `K`
//! entries held contiguously, and falls back to the full row (rebuilding its list) only when the
//! list cannot prove which two columns are cheapest. The answer is the same as the dense pass.

use super::kernels::cost;
use super::CostValue;

/// Columns per row. Measured (lap_timing example, best of 3): 4096x4096 uniform 0.078 s with 8,
/// 0.107 s with 32, 0.188 s with 64; rank-8 1024x1024 0.041 s with 8, 0.089 s with 32. Fewer
/// than 6 runs out too often and rebuilds more rows than it saves.
pub(crate) const K: usize = 8;

/// Below this many columns the dense passes are cheap enough and lists do not pay for themselves.
pub(crate) const MIN_COLS: usize = 256;

pub(crate) struct Candidates {
    /// `col[i * K + k]`: a column among the `K` cheapest of row `i` when the list was built.
    col: Vec<u32>,
    /// Its cost (minimisation sense), copied so that a query does not touch the matrix.
    cost: Vec<f64>,
    /// Every column of row `i` outside its list had reduced cost `>= bound[i]` when built;
    /// `-inf` until the row's list is first built.
    bound: Vec<f64>,
    /// Scratch row of reduced costs.
    tmp: Vec<f64>,
}

/// The two cheapest columns of a row: `(m1, j1, m2, j2)` with `m1 <= m2`.
pub(crate) type Min2 = (f64, usize, f64, usize);

impl Candidates {
    pub(crate) fn new(n: usize, m: usize) -> Self {
        Candidates {
            col: vec![0; n * K],
            cost: vec![0.0; n * K],
            bound: vec![f64::NEG_INFINITY; n],
            tmp: vec![0.0; m],
        }
    }

    /// Rebuilds the list of row `i` from the current potentials. Returns the two cheapest columns,
    /// which the new list proves exactly.
    #[inline(always)]
    pub(crate) fn build_row<T: CostValue, const MAX: bool>(
        &mut self,
        i: usize,
        row: &[T],
        v: &[f64],
    ) -> Min2 {
        let m = row.len();
        debug_assert!(m > K);
        let tmp = &mut self.tmp[..m];
        for ((t, r), vj) in tmp.iter_mut().zip(row).zip(v) {
            *t = cost::<T, MAX>(*r) - vj;
        }
        // A max-heap of the K cheapest seen so far; `tau` is its top. Entries at or above `tau`
        // are rejected without touching the heap, which after the first few hundred columns is
        // almost every entry.
        let mut hv = [0.0f64; K];
        let mut hj = [0u32; K];
        for k in 0..K {
            hv[k] = tmp[k];
            hj[k] = k as u32;
        }
        for k in (0..K / 2).rev() {
            sift_down(&mut hv, &mut hj, k);
        }
        let mut tau = hv[0];
        for (j, &t) in tmp.iter().enumerate().skip(K) {
            if t < tau {
                hv[0] = t;
                hj[0] = j as u32;
                sift_down(&mut hv, &mut hj, 0);
                tau = hv[0];
            }
        }
        let base = i * K;
        for k in 0..K {
            self.col[base + k] = hj[k];
            self.cost[base + k] = cost::<T, MAX>(row[hj[k] as usize]);
        }
        // Rejected and evicted entries were all >= the top of the heap at the time, and the top
        // only decreases.
        self.bound[i] = tau;
        // The list holds the K cheapest entries (ties kept in column order), so its two cheapest
        // are the row's, whatever the bound.
        self.scan_list(i, v)
    }

    /// Forgets every list (after potentials were raised, which breaks the bounds).
    pub(crate) fn invalidate(&mut self) {
        self.bound.fill(f64::NEG_INFINITY);
    }

    /// The two cheapest columns of row `i` under the current potentials, if the list proves them
    /// (ties broken towards the lower column, like the dense pass). `None`: rebuild the row.
    #[inline(always)]
    pub(crate) fn query(&self, i: usize, v: &[f64]) -> Option<Min2> {
        let q = self.scan_list(i, v);
        // Columns outside the list cost at least `bound`; a tie with the bound could hide a
        // lower-indexed column, which only matters for tie-breaking, so demand strictness.
        if q.2 < self.bound[i] {
            Some(q)
        } else {
            None
        }
    }

    #[inline(always)]
    fn scan_list(&self, i: usize, v: &[f64]) -> Min2 {
        let base = i * K;
        let cols = &self.col[base..base + K];
        let costs = &self.cost[base..base + K];
        let (mut m1, mut j1, mut m2, mut j2) =
            (f64::INFINITY, usize::MAX, f64::INFINITY, usize::MAX);
        for (&j, &c) in cols.iter().zip(costs) {
            let j = j as usize;
            let r = c - v[j];
            if r < m1 || (r == m1 && j < j1) {
                (m2, j2) = (m1, j1);
                (m1, j1) = (r, j);
            } else if r < m2 || (r == m2 && j < j2) {
                (m2, j2) = (r, j);
            }
        }
        (m1, j1, m2, j2)
    }
}

#[inline(always)]
fn sift_down(hv: &mut [f64; K], hj: &mut [u32; K], mut k: usize) {
    loop {
        let l = 2 * k + 1;
        if l >= K {
            return;
        }
        let r = l + 1;
        let c = if r < K && hv[r] > hv[l] { r } else { l };
        if hv[c] > hv[k] {
            hv.swap(c, k);
            hj.swap(c, k);
            k = c;
        } else {
            return;
        }
    }
}

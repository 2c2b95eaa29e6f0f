//! Row-major inner loops of the solver.
//!
//! Every pass walks one contiguous row of the cost matrix beside contiguous `f64` arrays, keeping
//! `LANES` independent running minima so that the loop has no loop-carried dependency across lanes
//! and LLVM turns it into packed compares and blends. Indices are tracked as `f64` lanes (exact
//! below 2^53) so that value and index blends have the same width.
//!
//! Every function here is `#[inline(always)]`: they are instantiated inside the
//! `#[target_feature]` entry points of `super::dispatch`, which is what lets them use AVX2/AVX-512
//! on machines that have it while the wheel stays portable.

use super::CostValue;

/// Independent accumulators per pass. Eight `f64` lanes fill two AVX2 or one AVX-512 register.
pub(crate) const LANES: usize = 8;

const INF: f64 = f64::INFINITY;
const NEG_INF: f64 = f64::NEG_INFINITY;

/// A cost entry as `f64`, negated when maximising so that the solver always minimises.
#[inline(always)]
pub(crate) fn cost<T: CostValue, const MAX: bool>(x: T) -> f64 {
    let f = x.to_f64();
    if MAX {
        -f
    } else {
        f
    }
}

#[inline(always)]
fn lane_indices() -> [f64; LANES] {
    core::array::from_fn(|l| l as f64)
}

/// Smallest value over lanes, ties to the smallest index (keeps the solver deterministic).
#[inline(always)]
fn reduce_argmin(val: &[f64; LANES], idx: &[f64; LANES]) -> (f64, usize, usize) {
    let mut b = 0;
    for l in 1..LANES {
        if val[l] < val[b] || (val[l] == val[b] && idx[l] < idx[b]) {
            b = l;
        }
    }
    (val[b], idx[b] as usize, b)
}

/// The smallest value of a pass, its first column, and whether another column ties it (the
/// solver then looks for a free column among the ties, which ends the search at once).
pub(crate) type Argmin = (f64, usize, bool);

/// [`reduce_argmin`] with ties: `tie[l] != 0` when lane `l` saw its best value more than once.
#[inline(always)]
fn reduce_argmin_tie(val: &[f64; LANES], idx: &[f64; LANES], tie: &[f64; LANES]) -> Argmin {
    let (b, j, lane) = reduce_argmin(val, idx);
    let tied = tie[lane] != 0.0 || (0..LANES).any(|l| l != lane && val[l] == b);
    (b, j, tied)
}

/// First pass of a shortest-path search from row `row`: `dd[j] = c[j] - v[j]`.
/// Returns the smallest `dd`, its first column and whether it is tied.
#[inline(always)]
pub(crate) fn dijkstra_init<T: CostValue, const MAX: bool>(
    row: &[T],
    v: &[f64],
    dd: &mut [f64],
) -> Argmin {
    let m = row.len();
    let mut best = [INF; LANES];
    let mut bidx = [0.0; LANES];
    let mut tie = [0.0; LANES];
    let mut idx = lane_indices();
    let (rc, rt) = row.as_chunks::<LANES>();
    let (vc, vt) = v[..m].as_chunks::<LANES>();
    let (dc, dt) = dd[..m].as_chunks_mut::<LANES>();
    for ((r, vv), d) in rc.iter().zip(vc).zip(dc.iter_mut()) {
        for l in 0..LANES {
            let t = cost::<T, MAX>(r[l]) - vv[l];
            d[l] = t;
            let better = t < best[l];
            let eq = t == best[l];
            tie[l] = if better {
                0.0
            } else if eq {
                1.0
            } else {
                tie[l]
            };
            best[l] = if better { t } else { best[l] };
            bidx[l] = if better { idx[l] } else { bidx[l] };
            idx[l] += LANES as f64;
        }
    }
    let base = rc.len() * LANES;
    for (k, ((r, vv), d)) in rt.iter().zip(vt).zip(dt.iter_mut()).enumerate() {
        let t = cost::<T, MAX>(*r) - vv;
        *d = t;
        tail_update(&mut best, &mut bidx, &mut tie, k, t, base + k);
    }
    reduce_argmin_tie(&best, &bidx, &tie)
}

/// One tail entry (column `j`, value `t`) into lane `k` of the running minima.
#[inline(always)]
fn tail_update(
    best: &mut [f64; LANES],
    bidx: &mut [f64; LANES],
    tie: &mut [f64; LANES],
    k: usize,
    t: f64,
    j: usize,
) {
    if t < best[k] {
        best[k] = t;
        bidx[k] = j as f64;
        tie[k] = 0.0;
    } else if t == best[k] {
        tie[k] = 1.0;
    }
}

/// Relaxes every unscanned column through row `row`, whose potential is `h`:
/// `dd[j] = min(dd[j], c[j] - v[j] - h)`. Scanned columns hold `-inf` in `dd` and are never
/// lowered (no finite value is below it) nor chosen. Returns the smallest unscanned `dd`, its
/// first column and whether it is tied; `+inf` when every unscanned column is out of reach.
///
/// The expression `(c - v) - h` is evaluated exactly so in `super::solver::Solver::pred_of`, which
/// recomputes predecessors instead of storing them here: that keeps this loop free of integer
/// stores.
#[inline(always)]
pub(crate) fn dijkstra_scan<T: CostValue, const MAX: bool>(
    row: &[T],
    v: &[f64],
    dd: &mut [f64],
    h: f64,
) -> Argmin {
    let m = row.len();
    let mut best = [INF; LANES];
    let mut bidx = [0.0; LANES];
    let mut tie = [0.0; LANES];
    let mut idx = lane_indices();
    let (rc, rt) = row.as_chunks::<LANES>();
    let (vc, vt) = v[..m].as_chunks::<LANES>();
    let (dc, dt) = dd[..m].as_chunks_mut::<LANES>();
    for ((r, vv), d) in rc.iter().zip(vc).zip(dc.iter_mut()) {
        for l in 0..LANES {
            let t = (cost::<T, MAX>(r[l]) - vv[l]) - h;
            let cur = d[l];
            let nd = if t < cur { t } else { cur };
            d[l] = nd;
            let cand = if nd == NEG_INF { INF } else { nd };
            let better = cand < best[l];
            let eq = cand == best[l];
            tie[l] = if better {
                0.0
            } else if eq {
                1.0
            } else {
                tie[l]
            };
            best[l] = if better { cand } else { best[l] };
            bidx[l] = if better { idx[l] } else { bidx[l] };
            idx[l] += LANES as f64;
        }
    }
    let base = rc.len() * LANES;
    for (k, ((r, vv), d)) in rt.iter().zip(vt).zip(dt.iter_mut()).enumerate() {
        let t = (cost::<T, MAX>(*r) - vv) - h;
        if t < *d {
            *d = t;
        }
        let cand = if *d == NEG_INF { INF } else { *d };
        tail_update(&mut best, &mut bidx, &mut tie, k, cand, base + k);
    }
    reduce_argmin_tie(&best, &bidx, &tie)
}

/// Smallest and second-smallest reduced cost `c[j] - v[j]` of a row, and the first column of the
/// smallest. The second value equals the first when the minimum is tied; it is `+inf` when the row
/// has a single finite entry (or a single column).
#[inline(always)]
pub(crate) fn row_min2<T: CostValue, const MAX: bool>(row: &[T], v: &[f64]) -> (f64, usize, f64) {
    let m = row.len();
    let mut m1 = [INF; LANES];
    let mut m2 = [INF; LANES];
    let mut i1 = [0.0; LANES];
    let mut idx = lane_indices();
    let (rc, rt) = row.as_chunks::<LANES>();
    let (vc, vt) = v[..m].as_chunks::<LANES>();
    for (r, vv) in rc.iter().zip(vc) {
        for l in 0..LANES {
            let h = cost::<T, MAX>(r[l]) - vv[l];
            let lt = h < m1[l];
            let low2 = if h < m2[l] { h } else { m2[l] };
            m2[l] = if lt { m1[l] } else { low2 };
            i1[l] = if lt { idx[l] } else { i1[l] };
            m1[l] = if lt { h } else { m1[l] };
            idx[l] += LANES as f64;
        }
    }
    let base = rc.len() * LANES;
    for (k, (r, vv)) in rt.iter().zip(vt).enumerate() {
        let h = cost::<T, MAX>(*r) - vv;
        if h < m1[k] {
            m2[k] = m1[k];
            m1[k] = h;
            i1[k] = (base + k) as f64;
        } else if h < m2[k] {
            m2[k] = h;
        }
    }
    merge_min2(&m1, &i1, &m2)
}

/// Combines per-lane (smallest, its index, second smallest) into the row's.
#[inline(always)]
pub(crate) fn merge_min2(
    m1: &[f64; LANES],
    i1: &[f64; LANES],
    m2: &[f64; LANES],
) -> (f64, usize, f64) {
    let (b1, j1, lane) = reduce_argmin(m1, i1);
    let mut b2 = m2[lane];
    for l in 0..LANES {
        if l != lane && m1[l] < b2 {
            b2 = m1[l];
        }
    }
    (b1, j1, b2)
}

/// One row of the row-major column reduction: `colmin[j] = min(colmin[j], c[j])`, remembering in
/// `colarg` the first row that reached the minimum.
#[inline(always)]
pub(crate) fn column_min_update<T: CostValue, const MAX: bool>(
    row: &[T],
    colmin: &mut [f64],
    colarg: &mut [f64],
    i: f64,
) {
    let m = row.len();
    let (rc, rt) = row.as_chunks::<LANES>();
    let (mc, mt) = colmin[..m].as_chunks_mut::<LANES>();
    let (ac, at) = colarg[..m].as_chunks_mut::<LANES>();
    for ((r, mn), a) in rc.iter().zip(mc.iter_mut()).zip(ac.iter_mut()) {
        for l in 0..LANES {
            let c = cost::<T, MAX>(r[l]);
            let lt = c < mn[l];
            mn[l] = if lt { c } else { mn[l] };
            a[l] = if lt { i } else { a[l] };
        }
    }
    for ((r, mn), a) in rt.iter().zip(mt.iter_mut()).zip(at.iter_mut()) {
        let c = cost::<T, MAX>(*r);
        if c < *mn {
            *mn = c;
            *a = i;
        }
    }
}

/// What a validating pass found in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RowCheck {
    /// Every entry is allowed; `huge`: one of them is finite and above `limit` in magnitude.
    Valid { huge: bool },
    /// The first entry that is NaN or equal to `bad` (the infinity that cannot mean "forbidden").
    Invalid(usize),
}

/// Validates a row: NaN and `bad` are errors, and finite entries above `limit` in magnitude are
/// reported (their differences could overflow). One test per entry, `!(|x| <= limit)`, flags all
/// three kinds at once and also every infinity; only a block so flagged is looked at closely, so
/// that the common case is a branch-free loop as cheap as a plain NaN check.
// The negated comparison is the point: it is true for NaN as well.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
#[inline(always)]
pub(crate) fn check_row<T: CostValue>(data: &[T], bad: f64, limit: f64) -> RowCheck {
    const BLOCK: usize = 1024;
    let mut huge = false;
    for (b, block) in data.chunks(BLOCK).enumerate() {
        let mut odd = false;
        for x in block {
            odd |= !(x.to_f64().abs() <= limit);
        }
        if !odd {
            continue;
        }
        for (k, x) in block.iter().enumerate() {
            let f = x.to_f64();
            if f.is_nan() || f == bad {
                return RowCheck::Invalid(b * BLOCK + k);
            }
            huge |= f.is_finite() && f.abs() > limit;
        }
    }
    RowCheck::Valid { huge }
}

/// The largest magnitude among the finite entries of a row (the scale against which a warm
/// start's potentials are judged).
#[inline(always)]
pub(crate) fn finite_absmax<T: CostValue>(data: &[T]) -> f64 {
    let mut big = [0.0f64; LANES];
    let (dc, dt) = data.as_chunks::<LANES>();
    for ch in dc {
        for l in 0..LANES {
            // `a < INF` is false for infinities and NaN, which do not count.
            let a = ch[l].to_f64().abs();
            let a = if a < INF { a } else { 0.0 };
            big[l] = if a > big[l] { a } else { big[l] };
        }
    }
    for (l, x) in dt.iter().enumerate() {
        let a = x.to_f64().abs();
        if a < INF && a > big[l] {
            big[l] = a;
        }
    }
    big.iter().fold(0.0, |a, &b| if b > a { b } else { a })
}

/// The same passes written with AVX2 intrinsics, for the hot loops that LLVM does not vectorise
/// well on its own (the lane-wise argmin with an index blend).
///
/// Only called from `super::dispatch::solve_avx2`, after `is_x86_feature_detected!("avx2")`.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{cost, tail_update, Argmin, CostValue, INF, NEG_INF};
    use std::arch::x86_64::*;

    /// Four entries from `p` as `f64`, negated when maximising.
    ///
    /// # Safety
    /// AVX2 available; `p..p+4` readable.
    #[inline(always)]
    unsafe fn load<T: CostValue, const MAX: bool>(p: *const T) -> __m256d {
        let x = T::load4(p);
        if MAX {
            _mm256_xor_pd(x, _mm256_set1_pd(-0.0))
        } else {
            x
        }
    }

    /// The 8 lanes of two register pairs of values and of indices, stored as arrays.
    ///
    /// # Safety
    /// AVX available.
    #[inline(always)]
    unsafe fn reduce(b0: __m256d, i0: __m256d, b1: __m256d, i1: __m256d) -> ([f64; 8], [f64; 8]) {
        let mut val = [0.0; 8];
        let mut idx = [0.0; 8];
        _mm256_storeu_pd(val.as_mut_ptr(), b0);
        _mm256_storeu_pd(val.as_mut_ptr().add(4), b1);
        _mm256_storeu_pd(idx.as_mut_ptr(), i0);
        _mm256_storeu_pd(idx.as_mut_ptr().add(4), i1);
        (val, idx)
    }

    /// The 8 lanes of two registers of tie masks, as 1.0 (tied) or 0.0.
    ///
    /// # Safety
    /// AVX available.
    #[inline(always)]
    unsafe fn ties(q0: __m256d, q1: __m256d) -> [f64; 8] {
        let one = _mm256_set1_pd(1.0);
        let mut t = [0.0; 8];
        _mm256_storeu_pd(t.as_mut_ptr(), _mm256_and_pd(q0, one));
        _mm256_storeu_pd(t.as_mut_ptr().add(4), _mm256_and_pd(q1, one));
        t
    }

    /// See [`super::dijkstra_init`].
    ///
    /// # Safety
    /// AVX2 available; `v` and `dd` at least as long as `row`.
    #[inline(always)]
    pub(crate) unsafe fn dijkstra_init<T: CostValue, const MAX: bool>(
        row: &[T],
        v: &[f64],
        dd: &mut [f64],
    ) -> Argmin {
        let m = row.len();
        assert!(v.len() >= m && dd.len() >= m);
        let (rp, vp, dp) = (row.as_ptr(), v.as_ptr(), dd.as_mut_ptr());
        let four = _mm256_set1_pd(4.0);
        let eight = _mm256_set1_pd(8.0);
        let mut b0 = _mm256_set1_pd(INF);
        let mut b1 = b0;
        let mut x0 = _mm256_setzero_pd();
        let mut x1 = x0;
        let mut q0 = x0;
        let mut q1 = x0;
        let mut i0 = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0);
        let mut i1 = _mm256_add_pd(i0, four);
        let mut j = 0;
        while j + 8 <= m {
            let t0 = _mm256_sub_pd(load::<T, MAX>(rp.add(j)), _mm256_loadu_pd(vp.add(j)));
            let t1 = _mm256_sub_pd(
                load::<T, MAX>(rp.add(j + 4)),
                _mm256_loadu_pd(vp.add(j + 4)),
            );
            _mm256_storeu_pd(dp.add(j), t0);
            _mm256_storeu_pd(dp.add(j + 4), t1);
            let lt0 = _mm256_cmp_pd::<_CMP_LT_OQ>(t0, b0);
            let lt1 = _mm256_cmp_pd::<_CMP_LT_OQ>(t1, b1);
            // A lane's tie flag: set by an equal value, cleared by a smaller one.
            q0 = _mm256_andnot_pd(lt0, _mm256_or_pd(q0, _mm256_cmp_pd::<_CMP_EQ_OQ>(t0, b0)));
            q1 = _mm256_andnot_pd(lt1, _mm256_or_pd(q1, _mm256_cmp_pd::<_CMP_EQ_OQ>(t1, b1)));
            b0 = _mm256_blendv_pd(b0, t0, lt0);
            b1 = _mm256_blendv_pd(b1, t1, lt1);
            x0 = _mm256_blendv_pd(x0, i0, lt0);
            x1 = _mm256_blendv_pd(x1, i1, lt1);
            i0 = _mm256_add_pd(i0, eight);
            i1 = _mm256_add_pd(i1, eight);
            j += 8;
        }
        let (mut val, mut idx) = reduce(b0, x0, b1, x1);
        let mut tie = ties(q0, q1);
        for (k, jj) in (j..m).enumerate() {
            let t = cost::<T, MAX>(row[jj]) - v[jj];
            dd[jj] = t;
            tail_update(&mut val, &mut idx, &mut tie, k, t, jj);
        }
        super::reduce_argmin_tie(&val, &idx, &tie)
    }

    /// See [`super::dijkstra_scan`]; same arithmetic, bit for bit.
    ///
    /// # Safety
    /// AVX2 available; `v` and `dd` at least as long as `row`.
    #[inline(always)]
    pub(crate) unsafe fn dijkstra_scan<T: CostValue, const MAX: bool>(
        row: &[T],
        v: &[f64],
        dd: &mut [f64],
        h: f64,
    ) -> Argmin {
        let m = row.len();
        assert!(v.len() >= m && dd.len() >= m);
        let (rp, vp, dp) = (row.as_ptr(), v.as_ptr(), dd.as_mut_ptr());
        let hv = _mm256_set1_pd(h);
        let inf = _mm256_set1_pd(INF);
        let ninf = _mm256_set1_pd(NEG_INF);
        let four = _mm256_set1_pd(4.0);
        let eight = _mm256_set1_pd(8.0);
        let mut b0 = inf;
        let mut b1 = inf;
        let mut x0 = _mm256_setzero_pd();
        let mut x1 = x0;
        let mut q0 = x0;
        let mut q1 = x0;
        let mut i0 = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0);
        let mut i1 = _mm256_add_pd(i0, four);
        let mut j = 0;
        while j + 8 <= m {
            let c0 = load::<T, MAX>(rp.add(j));
            let c1 = load::<T, MAX>(rp.add(j + 4));
            let t0 = _mm256_sub_pd(_mm256_sub_pd(c0, _mm256_loadu_pd(vp.add(j))), hv);
            let t1 = _mm256_sub_pd(_mm256_sub_pd(c1, _mm256_loadu_pd(vp.add(j + 4))), hv);
            // min_pd(a, b) is `a < b ? a : b`, the scalar code's choice exactly.
            let n0 = _mm256_min_pd(t0, _mm256_loadu_pd(dp.add(j)));
            let n1 = _mm256_min_pd(t1, _mm256_loadu_pd(dp.add(j + 4)));
            _mm256_storeu_pd(dp.add(j), n0);
            _mm256_storeu_pd(dp.add(j + 4), n1);
            let k0 = _mm256_blendv_pd(n0, inf, _mm256_cmp_pd::<_CMP_EQ_OQ>(n0, ninf));
            let k1 = _mm256_blendv_pd(n1, inf, _mm256_cmp_pd::<_CMP_EQ_OQ>(n1, ninf));
            let lt0 = _mm256_cmp_pd::<_CMP_LT_OQ>(k0, b0);
            let lt1 = _mm256_cmp_pd::<_CMP_LT_OQ>(k1, b1);
            q0 = _mm256_andnot_pd(lt0, _mm256_or_pd(q0, _mm256_cmp_pd::<_CMP_EQ_OQ>(k0, b0)));
            q1 = _mm256_andnot_pd(lt1, _mm256_or_pd(q1, _mm256_cmp_pd::<_CMP_EQ_OQ>(k1, b1)));
            b0 = _mm256_blendv_pd(b0, k0, lt0);
            b1 = _mm256_blendv_pd(b1, k1, lt1);
            x0 = _mm256_blendv_pd(x0, i0, lt0);
            x1 = _mm256_blendv_pd(x1, i1, lt1);
            i0 = _mm256_add_pd(i0, eight);
            i1 = _mm256_add_pd(i1, eight);
            j += 8;
        }
        let (mut val, mut idx) = reduce(b0, x0, b1, x1);
        let mut tie = ties(q0, q1);
        for (k, jj) in (j..m).enumerate() {
            let t = (cost::<T, MAX>(row[jj]) - v[jj]) - h;
            if t < dd[jj] {
                dd[jj] = t;
            }
            let cand = if dd[jj] == NEG_INF { INF } else { dd[jj] };
            tail_update(&mut val, &mut idx, &mut tie, k, cand, jj);
        }
        super::reduce_argmin_tie(&val, &idx, &tie)
    }

    /// See [`super::row_min2`].
    ///
    /// # Safety
    /// AVX2 available; `v` at least as long as `row`.
    #[inline(always)]
    pub(crate) unsafe fn row_min2<T: CostValue, const MAX: bool>(
        row: &[T],
        v: &[f64],
    ) -> (f64, usize, f64) {
        let m = row.len();
        assert!(v.len() >= m);
        let (rp, vp) = (row.as_ptr(), v.as_ptr());
        let four = _mm256_set1_pd(4.0);
        let eight = _mm256_set1_pd(8.0);
        let mut a0 = _mm256_set1_pd(INF);
        let mut a1 = a0;
        let mut s0 = a0;
        let mut s1 = a0;
        let mut x0 = _mm256_setzero_pd();
        let mut x1 = x0;
        let mut i0 = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0);
        let mut i1 = _mm256_add_pd(i0, four);
        let mut j = 0;
        while j + 8 <= m {
            let h0 = _mm256_sub_pd(load::<T, MAX>(rp.add(j)), _mm256_loadu_pd(vp.add(j)));
            let h1 = _mm256_sub_pd(
                load::<T, MAX>(rp.add(j + 4)),
                _mm256_loadu_pd(vp.add(j + 4)),
            );
            let lt0 = _mm256_cmp_pd::<_CMP_LT_OQ>(h0, a0);
            let lt1 = _mm256_cmp_pd::<_CMP_LT_OQ>(h1, a1);
            s0 = _mm256_blendv_pd(_mm256_min_pd(h0, s0), a0, lt0);
            s1 = _mm256_blendv_pd(_mm256_min_pd(h1, s1), a1, lt1);
            x0 = _mm256_blendv_pd(x0, i0, lt0);
            x1 = _mm256_blendv_pd(x1, i1, lt1);
            a0 = _mm256_blendv_pd(a0, h0, lt0);
            a1 = _mm256_blendv_pd(a1, h1, lt1);
            i0 = _mm256_add_pd(i0, eight);
            i1 = _mm256_add_pd(i1, eight);
            j += 8;
        }
        let (mut m1, mut i1s) = reduce(a0, x0, a1, x1);
        let (mut m2, _) = reduce(s0, x0, s1, x1);
        for (k, jj) in (j..m).enumerate() {
            let h = cost::<T, MAX>(row[jj]) - v[jj];
            if h < m1[k] {
                m2[k] = m1[k];
                m1[k] = h;
                i1s[k] = jj as f64;
            } else if h < m2[k] {
                m2[k] = h;
            }
        }
        super::merge_min2(&m1, &i1s, &m2)
    }
}

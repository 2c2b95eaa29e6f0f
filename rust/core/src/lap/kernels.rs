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

/// First pass of a shortest-path search from row `row`: `dd[j] = c[j] - v[j]`.
/// Returns the smallest `dd` and its first column.
#[inline(always)]
pub(crate) fn dijkstra_init<T: CostValue, const MAX: bool>(
    row: &[T],
    v: &[f64],
    dd: &mut [f64],
) -> (f64, usize) {
    let m = row.len();
    let mut best = [INF; LANES];
    let mut bidx = [0.0; LANES];
    let mut idx = lane_indices();
    let (rc, rt) = row.as_chunks::<LANES>();
    let (vc, vt) = v[..m].as_chunks::<LANES>();
    let (dc, dt) = dd[..m].as_chunks_mut::<LANES>();
    for ((r, vv), d) in rc.iter().zip(vc).zip(dc.iter_mut()) {
        for l in 0..LANES {
            let t = cost::<T, MAX>(r[l]) - vv[l];
            d[l] = t;
            let better = t < best[l];
            best[l] = if better { t } else { best[l] };
            bidx[l] = if better { idx[l] } else { bidx[l] };
            idx[l] += LANES as f64;
        }
    }
    let base = rc.len() * LANES;
    for (k, ((r, vv), d)) in rt.iter().zip(vt).zip(dt.iter_mut()).enumerate() {
        let t = cost::<T, MAX>(*r) - vv;
        *d = t;
        if t < best[k] {
            best[k] = t;
            bidx[k] = (base + k) as f64;
        }
    }
    let (b, j, _) = reduce_argmin(&best, &bidx);
    (b, j)
}

/// Relaxes every unscanned column through row `row`, whose potential is `h`:
/// `dd[j] = min(dd[j], c[j] - v[j] - h)`. Scanned columns hold `-inf` in `dd` and are never
/// lowered (no finite value is below it) nor chosen. Returns the smallest unscanned `dd` and its
/// first column; `+inf` when every unscanned column is out of reach.
///
/// The expression `(c - v) - h` is evaluated exactly so in `super::Solver::pred_of`, which
/// recomputes predecessors instead of storing them here: that keeps this loop free of integer
/// stores.
#[inline(always)]
pub(crate) fn dijkstra_scan<T: CostValue, const MAX: bool>(
    row: &[T],
    v: &[f64],
    dd: &mut [f64],
    h: f64,
) -> (f64, usize) {
    let m = row.len();
    let mut best = [INF; LANES];
    let mut bidx = [0.0; LANES];
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
        if cand < best[k] {
            best[k] = cand;
            bidx[k] = (base + k) as f64;
        }
    }
    let (b, j, _) = reduce_argmin(&best, &bidx);
    (b, j)
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
    let (b1, j1, lane) = reduce_argmin(&m1, &i1);
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

/// Position of the first entry that is NaN or equal to `bad` (the infinity that cannot mean
/// "forbidden"), scanning in blocks so that the common all-valid case is a branch-free loop.
#[inline(always)]
pub(crate) fn find_invalid<T: CostValue>(data: &[T], bad: f64) -> Option<usize> {
    const BLOCK: usize = 1024;
    for (b, block) in data.chunks(BLOCK).enumerate() {
        let mut any = false;
        for x in block {
            let f = x.to_f64();
            any |= f.is_nan() | (f == bad);
        }
        if any {
            let k = block
                .iter()
                .position(|x| {
                    let f = x.to_f64();
                    f.is_nan() || f == bad
                })
                .expect("a block flagged invalid holds an invalid entry");
            return Some(b * BLOCK + k);
        }
    }
    None
}

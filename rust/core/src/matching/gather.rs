//! The kernels of the cost engine: gathers of permuted tensors into matrices, the GEMM that
//! accumulates a cost from two of them, and the float64 dot product of the objective.

use super::check::{with_data, Data, Elem, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Where one axis of a tensor is read: the source position of each output position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index<'s> {
    /// All `n` positions in order.
    All(usize),
    /// Position `i` reads source position `map[i]`.
    Map(&'s [usize]),
}

impl Index<'_> {
    /// Number of output positions.
    pub fn len(&self) -> usize {
        match self {
            Index::All(n) => *n,
            Index::Map(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The source position of output position `i`.
    pub fn get(&self, i: usize) -> usize {
        match self {
            Index::All(_) => i,
            Index::Map(m) => m[i],
        }
    }

    /// The source positions of output positions `range`.
    pub(super) fn part(&self, range: std::ops::Range<usize>) -> Vec<usize> {
        range.map(|i| self.get(i)).collect()
    }
}

/// Float32 values widened at a time from a half-precision tensor for one product or dot: a tensor
/// larger than this (an embedding, 32000 x 2048) is read in blocks of rows, so the engine's
/// buffers never hold a whole widened copy of it (16 MiB of float32 per buffer at most here).
pub(super) const WIDEN_BLOCK: usize = 1 << 22;

/// Blocks of rows (positions of axis 0) of a tensor of `shape` to read at a time: one block for
/// float32 (read in place) or a small tensor, else blocks of at most [`WIDEN_BLOCK`] values.
pub(super) fn row_blocks(t: &Tensor<'_>, other: &Tensor<'_>) -> Vec<std::ops::Range<usize>> {
    let rows = t.shape.first().copied().unwrap_or(1);
    let numel: usize = t.shape.iter().product();
    let wide = matches!(t.data, Data::F32(_)) && matches!(other.data, Data::F32(_));
    if wide || numel <= WIDEN_BLOCK || rows < 2 {
        return std::iter::once(0..rows).collect();
    }
    let per = (WIDEN_BLOCK / (numel / rows).max(1)).max(1);
    (0..rows)
        .step_by(per)
        .map(|r| r..(r + per).min(rows))
        .collect()
}

/// Where a gather reads: for each output axis (axis `ax` first, then the others in order), the
/// source offset of each of its positions.
struct Plan {
    offs: Vec<Vec<usize>>,
    /// `Some(len)` when the innermost output axis is the source's last axis, unselected: each
    /// innermost run is then a contiguous copy of `len` values.
    run: Option<usize>,
}

impl Plan {
    fn new(t: &Tensor<'_>, ax: usize, idx: &[Index<'_>]) -> Self {
        let nd = t.shape.len();
        let mut strides = vec![1usize; nd];
        for k in (0..nd.saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * t.shape[k + 1];
        }
        let order: Vec<usize> = std::iter::once(ax)
            .chain((0..nd).filter(|&k| k != ax))
            .collect();
        let offs: Vec<Vec<usize>> = order
            .iter()
            .map(|&k| {
                (0..idx[k].len())
                    .map(|i| idx[k].get(i) * strides[k])
                    .collect()
            })
            .collect();
        let last = offs.len() - 1;
        let run = (order[last] == nd - 1 && matches!(idx[nd - 1], Index::All(_)))
            .then(|| offs[last].len());
        Plan { offs, run }
    }

    /// Writes output row `r` (all `rest` positions of its chunk) from `data`.
    fn fill_row<E: Elem>(&self, data: &[E], r: usize, row: &mut [MaybeUninit<f32>]) {
        let offs = &self.offs;
        let last = offs.len() - 1;
        let mut counter = vec![0usize; last];
        let mut pos = 0;
        loop {
            let base = offs[0][r] + (1..last).map(|d| offs[d][counter[d]]).sum::<usize>();
            let len = offs[last].len();
            let to = &mut row[pos..pos + len];
            match self.run {
                // Kernel-sized runs (a 3x3 convolution's 9 taps) copied with a size known at
                // compile time: a variable-length copy per run is a library call, which
                // measured as much as the GEMM it feeds on ResNet-50.
                Some(1) => {
                    to[0].write(data[base].f32());
                }
                Some(9) => put(to, fixed::<9, E>(&data[base..])),
                Some(25) => put(to, fixed::<25, E>(&data[base..])),
                Some(49) => put(to, fixed::<49, E>(&data[base..])),
                Some(_) => put(to, &data[base..base + len]),
                None => {
                    for (d, &o) in to.iter_mut().zip(&offs[last]) {
                        d.write(data[base + o].f32());
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
    }
}

/// Writes `t` with axis `ax` first and the other axes after it in order, each output axis `k`
/// reading source positions `idx[k]`, as a row-major `(idx[ax].len(), rest)` matrix into `out`.
pub(super) fn gather(
    t: &Tensor<'_>,
    ax: usize,
    idx: &[Index<'_>],
    out: &mut Vec<f32>,
) -> (usize, usize) {
    let plan = Plan::new(t, ax, idx);
    let offs = &plan.offs;
    let rows = offs[0].len();
    let rest: usize = offs[1..].iter().map(|o| o.len()).product();
    out.clear();
    if rows * rest == 0 {
        return (rows, rest);
    }
    if offs.len() == 1 {
        with_data!(t.data, d => out.extend(offs[0].iter().map(|&o| d[o].f32())));
        return (rows, rest);
    }
    out.reserve(rows * rest);
    let dst = &mut out.spare_capacity_mut()[..rows * rest];
    // Gathers are memory-bound copies that would otherwise run on one thread between threaded
    // GEMMs; rows in parallel, in tasks of at least ~64 KiB.
    with_data!(t.data, d => {
        if rows * rest >= 1 << 15 {
            dst.par_chunks_mut(rest)
                .with_min_len((1 << 14) / rest + 1)
                .enumerate()
                .for_each(|(r, row)| plan.fill_row(d, r, row));
        } else {
            for (r, row) in dst.chunks_mut(rest).enumerate() {
                plan.fill_row(d, r, row);
            }
        }
    });
    // SAFETY: every one of the `rows * rest` slots was written above (each row's odometer walks
    // all `rest` positions of its chunk).
    unsafe { out.set_len(rows * rest) };
    (rows, rest)
}

/// Copies `src` into the uninitialised `dst` of the same length.
#[inline(always)]
fn put<E: Elem>(dst: &mut [MaybeUninit<f32>], src: &[E]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s.f32());
    }
}

/// The first `L` values of `x` as an array (so that copying them has a size known at compile time).
#[inline(always)]
fn fixed<const L: usize, E>(x: &[E]) -> &[E; L] {
    x[..L].try_into().expect("a run of L values")
}

/// The matrix `M^(ax)` of a tensor read through `idx` (axis `ax`'s units as rows, everything
/// else flattened as columns), borrowed when it is the tensor itself, else gathered into `buf`.
/// `transposed`: stored as `r x n` row-major (a matrix whose permuted axis is its columns is
/// stored by selecting rows, which copies whole rows instead of transposing element by element).
pub(super) struct Operand<'s> {
    pub(super) data: &'s [f32],
    pub(super) r: usize,
    pub(super) transposed: bool,
}

/// The operand of `t` for axis `ax` read through `idx` (see [`Operand`]).
pub(super) fn operand<'s>(
    t: &Tensor<'s>,
    ax: usize,
    idx: &[Index<'_>],
    buf: &'s mut Vec<f32>,
) -> Operand<'s> {
    let nd = t.shape.len();
    if nd == 2 && ax == 1 {
        let cols = t.shape[1];
        return match (&idx[0], t.data) {
            (Index::All(r), Data::F32(d)) => Operand {
                data: d,
                r: *r,
                transposed: true,
            },
            (rows, data) => {
                // Whole rows, widened to float32 on the way when stored in half precision.
                buf.clear();
                buf.reserve(rows.len() * cols);
                with_data!(data, d => {
                    for i in 0..rows.len() {
                        let r = rows.get(i);
                        buf.extend(d[r * cols..(r + 1) * cols].iter().map(|v| v.f32()));
                    }
                });
                Operand {
                    data: buf,
                    r: rows.len(),
                    transposed: true,
                }
            }
        };
    }
    if let (Data::F32(d), true) = (
        t.data,
        ax == 0 && idx.iter().all(|i| matches!(i, Index::All(_))),
    ) {
        let r = d.len() / t.shape[0].max(1);
        return Operand {
            data: d,
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
pub(super) fn gemm_nt(c: &mut [f32], n: usize, lhs: &Operand<'_>, rhs: &Operand<'_>, par: Par) {
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

/// `sum x_i y_i` accumulated in float64 over independent lanes (so that it vectorises).
pub(super) fn dot_f64(x: Data<'_>, y: &[f32]) -> f64 {
    with_data!(x, d => dot_lanes(d, y))
}

impl<'a> Data<'a> {
    /// Elements `range`.
    pub(super) fn slice(&self, range: std::ops::Range<usize>) -> Data<'a> {
        match *self {
            Data::F32(d) => Data::F32(&d[range]),
            Data::F16(d) => Data::F16(&d[range]),
            Data::Bf16(d) => Data::Bf16(&d[range]),
        }
    }
}

fn dot_lanes<E: Elem>(x: &[E], y: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let (xc, xt) = x.as_chunks::<L>();
    let (yc, yt) = y.as_chunks::<L>();
    for (a, b) in xc.iter().zip(yc) {
        for l in 0..L {
            acc[l] += a[l].f32() as f64 * b[l] as f64;
        }
    }
    let tail: f64 = xt
        .iter()
        .zip(yt)
        .map(|(a, b)| a.f32() as f64 * *b as f64)
        .sum();
    acc.iter().sum::<f64>() + tail
}

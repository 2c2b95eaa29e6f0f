//! A product backend gives the engine's result: the same coordinate descent runs on the costs it
//! returns. The backend here computes every product naively in float64 from its own copy of the
//! weights (nothing shared with the engine's gathers and GEMMs), as a device backend would.

use super::tests::{
    group, mixed_net, mlp, options, permute, random_tensors, shuffled, tensors, Rng,
};
use super::*;

/// Products, objective and finiteness from plain loops over row-major float32 weights.
struct Naive {
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    calls: usize,
    /// Fail on this call (counting every call of any kind from 0).
    fail_at: Option<usize>,
}

impl Naive {
    fn new(a: &[Vec<f32>], b: &[Vec<f32>]) -> Self {
        Naive {
            a: a.to_vec(),
            b: b.to_vec(),
            calls: 0,
            fail_at: None,
        }
    }

    fn tick(&mut self) -> Result<(), MatchError> {
        self.calls += 1;
        if self.fail_at == Some(self.calls - 1) {
            return Err(MatchError::Products {
                reason: "out of device memory".into(),
            });
        }
        Ok(())
    }
}

/// `data` viewed under `shape`, read at `idx` on each axis, `axis` first: `(rows, values)`.
fn read(data: &[f32], shape: &[usize], axis: usize, idx: &[Index<'_>]) -> (usize, Vec<f64>) {
    let nd = shape.len();
    let mut strides = vec![1usize; nd];
    for k in (0..nd.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    let order: Vec<usize> = std::iter::once(axis)
        .chain((0..nd).filter(|&k| k != axis))
        .collect();
    let sizes: Vec<usize> = order.iter().map(|&k| idx[k].len()).collect();
    let total: usize = sizes.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut pos = vec![0usize; nd];
    for _ in 0..total {
        let off: usize = order
            .iter()
            .zip(&pos)
            .map(|(&k, &i)| idx[k].get(i) * strides[k])
            .sum();
        out.push(data[off] as f64);
        for d in (0..nd).rev() {
            pos[d] += 1;
            if pos[d] < sizes[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    (sizes[0], out)
}

impl Products for Naive {
    fn add_products(
        &mut self,
        n: usize,
        requests: &[Product<'_>],
        c: &mut [f32],
    ) -> Result<(), MatchError> {
        self.tick()?;
        let mut sum = vec![0.0f64; n * n];
        for req in requests {
            let (rows, xa) = read(&self.a[req.param], req.shape, req.axis, &req.a);
            let (_, mut xb) = read(&self.b[req.param], req.shape, req.axis, &req.b);
            if let Some(old) = &req.b_old {
                let (_, xo) = read(&self.b[req.param], req.shape, req.axis, old);
                for (x, o) in xb.iter_mut().zip(xo) {
                    *x -= o;
                }
            }
            assert_eq!(rows, n);
            let r = xa.len() / n;
            for i in 0..n {
                for j in 0..n {
                    sum[i * n + j] += (0..r).map(|k| xa[i * r + k] * xb[j * r + k]).sum::<f64>();
                }
            }
        }
        for (x, s) in c.iter_mut().zip(sum) {
            *x += s as f32;
        }
        Ok(())
    }

    fn objective(&mut self, parts: &[(usize, Vec<Index<'_>>)]) -> Result<f64, MatchError> {
        self.tick()?;
        let mut total = 0.0;
        for (p, idx) in parts {
            let shape: Vec<usize> = idx.iter().map(Index::len).collect();
            let (_, xb) = read(&self.b[*p], &shape, 0, idx);
            total += self.a[*p]
                .iter()
                .zip(xb)
                .map(|(&x, y)| x as f64 * y)
                .sum::<f64>();
        }
        Ok(total)
    }

    fn first_non_finite(&mut self, params: &[usize]) -> Result<Option<(usize, char)>, MatchError> {
        self.tick()?;
        for &p in params {
            for (model, d) in [('A', &self.a[p]), ('B', &self.b[p])] {
                if d.iter().any(|x| !x.is_finite()) {
                    return Ok(Some((p, model)));
                }
            }
        }
        Ok(None)
    }
}

/// Matching on the engine's kernels and on the naive backend give the same permutations,
/// sweeps and (up to rounding) objective.
fn same_on_both(
    shapes: &[Vec<usize>],
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    groups: &[Group],
    opts: &Options,
) {
    let (ta, tb) = (tensors(a, shapes), tensors(b, shapes));
    let cpu = weight_matching(groups, &ta, &tb, opts).unwrap();
    let mut naive = Naive::new(a, b);
    let names: Vec<String> = (0..shapes.len()).map(|k| format!("p{k}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let dev = weight_matching_on(groups, &names, &shape_refs, &mut naive, opts).unwrap();
    assert_eq!(dev.perms, cpu.perms);
    assert_eq!(dev.sweeps, cpu.sweeps);
    assert_eq!(dev.orders, cpu.orders);
    let tol = 1e-5 * cpu.objective.abs().max(1.0);
    assert!(
        (dev.objective - cpu.objective).abs() <= tol,
        "{} vs {}",
        dev.objective,
        cpu.objective
    );
    assert!(naive.calls > 0);
    assert!(dev.timings.gemm > 0.0 && dev.timings.gather == 0.0);
}

#[test]
fn a_product_backend_gives_the_engines_result() {
    let mut rng = Rng(2024);
    // Unrelated A and B (several sweeps of real coordinate descent), with and without the
    // forward pass, keeping every cost or none.
    let (shapes, a, groups) = mixed_net(&mut rng);
    let b = random_tensors(&shapes, &mut rng);
    for forward in [false, true] {
        for cap in [None, Some(0)] {
            let opts = Options {
                max_cost_bytes: cap,
                ..options(100, forward)
            };
            same_on_both(&shapes, &a, &b, &groups, &opts);
        }
    }
    // A planted permutation of a deeper MLP.
    let (shapes, a, groups) = mlp(&[10, 32, 24, 16, 4], &mut rng);
    let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
    let b = permute(&shapes, &a, &groups, &planted);
    same_on_both(&shapes, &a, &b, &groups, &options(100, true));
    same_on_both(&shapes, &a, &b, &groups, &options(100, false));
}

#[test]
fn a_product_backend_runs_the_nested_head_solve() {
    // As nested_heads_recover_a_permuted_attention_layer: the merged (heads x within-head) view
    // goes to the backend with its shape.
    let mut rng = Rng(77);
    let (h, d, r) = (4, 6, 12);
    let shapes = vec![vec![r, 8], vec![h, d, r], vec![5, h, d]];
    let a = random_tensors(&shapes, &mut rng);
    let groups = vec![
        group("d", d, vec![(1, 1), (2, 2)]),
        group("h", h, vec![(1, 0), (2, 1)]),
        group("r", r, vec![(0, 0), (1, 2)]),
    ];
    let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
    let b = permute(&shapes, &a, &groups, &planted);
    same_on_both(&shapes, &a, &b, &groups, &options(10, true));
    let noise = random_tensors(&shapes, &mut rng);
    same_on_both(&shapes, &a, &noise, &groups, &options(10, true));
}

#[test]
fn a_failing_backend_stops_the_matching_with_its_error() {
    let mut rng = Rng(5);
    let (shapes, a, groups) = mixed_net(&mut rng);
    let b = random_tensors(&shapes, &mut rng);
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let names = vec![""; shapes.len()];
    let mut naive = Naive::new(&a, &b);
    weight_matching_on(
        &groups,
        &names,
        &shape_refs,
        &mut naive,
        &options(100, true),
    )
    .unwrap();
    let calls = naive.calls;
    assert!(calls > 4);
    for fail_at in [0, 1, calls / 2, calls - 1] {
        let mut naive = Naive::new(&a, &b);
        naive.fail_at = Some(fail_at);
        let e = weight_matching_on(
            &groups,
            &names,
            &shape_refs,
            &mut naive,
            &options(100, true),
        )
        .unwrap_err();
        assert_eq!(
            e,
            MatchError::Products {
                reason: "out of device memory".into()
            }
        );
        // Nothing is asked of the backend after it failed.
        assert_eq!(naive.calls, fail_at + 1);
    }
}

#[test]
fn a_backend_finds_non_finite_weights_and_shapes_are_checked() {
    let mut rng = Rng(6);
    let (shapes, a, groups) = mixed_net(&mut rng);
    let mut b = random_tensors(&shapes, &mut rng);
    b[2][3] = f32::NAN;
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let names: Vec<String> = (0..shapes.len()).map(|k| format!("w{k}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut naive = Naive::new(&a, &b);
    let e = weight_matching_on(&groups, &names, &shape_refs, &mut naive, &options(5, false))
        .unwrap_err();
    assert_eq!(
        e,
        MatchError::NonFinite {
            group: "P2".into(),
            param: "w2".into(),
            model: 'B'
        }
    );
    // A group that does not fit the shapes is refused before the backend is asked anything.
    let mut bad = groups.clone();
    bad[0].size += 1;
    let mut naive = Naive::new(&a, &b);
    let e =
        weight_matching_on(&bad, &names, &shape_refs, &mut naive, &options(5, false)).unwrap_err();
    assert!(matches!(e, MatchError::AxisSize { .. }), "{e:?}");
    assert_eq!(naive.calls, 0);
}

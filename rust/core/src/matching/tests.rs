//! Planted permutations are recovered; incremental cost updates equal recomputation.

use super::check::check;
use super::driver::SplitMix64;
use super::engine::Engine;
use super::gather::{gather, Index};
use super::*;
use crate::lap::LapSolution;
use faer::Par;

pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn normal(&mut self) -> f32 {
        // Sum of uniforms: light, deterministic, close enough to Gaussian for weights.
        let mut s = 0.0;
        for _ in 0..4 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            s += (self.0 >> 11) as f32 / (1u64 << 53) as f32;
        }
        s - 2.0
    }
}

/// An MLP `sizes[0] -> ... -> sizes[last]` as weights (out, in) and biases, with one group per
/// hidden layer.
pub(super) fn mlp(sizes: &[usize], rng: &mut Rng) -> (Vec<Vec<usize>>, Vec<Vec<f32>>, Vec<Group>) {
    let mut shapes = Vec::new();
    let mut data = Vec::new();
    let mut groups = Vec::new();
    for l in 0..sizes.len() - 1 {
        let (i, o) = (sizes[l], sizes[l + 1]);
        shapes.push(vec![o, i]);
        data.push((0..o * i).map(|_| rng.normal()).collect());
        shapes.push(vec![o]);
        data.push((0..o).map(|_| rng.normal()).collect());
    }
    for (l, &size) in sizes.iter().enumerate().take(sizes.len() - 1).skip(1) {
        let w = 2 * (l - 1);
        groups.push(Group {
            name: format!("P{l}"),
            size,
            members: vec![(w, 0), (w + 1, 0), (w + 2, 1)],
        });
    }
    (shapes, data, groups)
}

/// Applies `perms` to B's parameters the way `apply_permutation` does: new[i] = old[perm[i]].
pub(super) fn permute(
    shapes: &[Vec<usize>],
    data: &[Vec<f32>],
    groups: &[Group],
    perms: &[Vec<usize>],
) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = data.to_vec();
    for (g, group) in groups.iter().enumerate() {
        for &(p, k) in &group.members {
            let t = Tensor {
                name: "",
                data: (&out[p]).into(),
                shape: &shapes[p],
            };
            let idx: Vec<Index> = (0..shapes[p].len())
                .map(|d| {
                    if d == k {
                        Index::Map(&perms[g])
                    } else {
                        Index::All(shapes[p][d])
                    }
                })
                .collect();
            // Gather with the permuted axis first, then move it back.
            let mut moved = Vec::new();
            let (rows, rest) = gather(&t, k, &idx, &mut moved);
            let mut back = vec![0.0; moved.len()];
            let outer: usize = shapes[p][..k].iter().product();
            let inner: usize = shapes[p][k + 1..].iter().product();
            for r in 0..rows {
                for o in 0..outer {
                    for i in 0..inner {
                        back[(o * rows + r) * inner + i] = moved[r * rest + o * inner + i];
                    }
                }
            }
            out[p] = back;
        }
    }
    out
}

/// A group named `name` of `size` units permuting `members`.
pub(super) fn group(name: &str, size: usize, members: Vec<(usize, usize)>) -> Group {
    Group {
        name: name.to_string(),
        size,
        members,
    }
}

/// Tensors of `shapes` over half-precision data, `wrap` naming its format.
fn half_tensors<'a, H>(
    data: &'a [Vec<H>],
    shapes: &'a [Vec<usize>],
    wrap: fn(&'a [H]) -> Data<'a>,
) -> Vec<Tensor<'a>> {
    data.iter()
        .zip(shapes)
        .map(|(d, s)| Tensor {
            name: "",
            data: wrap(d),
            shape: s,
        })
        .collect()
}

/// Half-precision values widened to float32 (exactly).
fn widened<H: Copy>(data: &[Vec<H>]) -> Vec<Vec<f32>>
where
    f32: From<H>,
{
    data.iter()
        .map(|t| t.iter().map(|&x| f32::from(x)).collect())
        .collect()
}

/// Random values for tensors of `shapes`.
pub(super) fn random_tensors(shapes: &[Vec<usize>], rng: &mut Rng) -> Vec<Vec<f32>> {
    shapes
        .iter()
        .map(|s| {
            (0..s.iter().product::<usize>())
                .map(|_| rng.normal())
                .collect()
        })
        .collect()
}

pub(super) fn tensors<'a>(data: &'a [Vec<f32>], shapes: &'a [Vec<usize>]) -> Vec<Tensor<'a>> {
    data.iter()
        .zip(shapes)
        .map(|(d, s)| Tensor {
            name: "",
            data: d.into(),
            shape: s,
        })
        .collect()
}

/// Options with no initial permutations and no warm start.
pub(super) fn options(max_iter: usize, forward: bool) -> Options {
    Options {
        max_iter,
        seed: 0,
        init: None,
        forward,
        warm: None,
        max_cost_bytes: None,
    }
}

pub(super) fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut s = SplitMix64(rng.0);
    rng.normal();
    s.permutation(n)
}

#[test]
fn planted_permutations_are_recovered() {
    let mut rng = Rng(12345);
    let (shapes, a, groups) = mlp(&[20, 48, 40, 32, 10], &mut rng);
    let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
    // B = A with every hidden layer shuffled: B's unit perm_inv... so that matching finds planted.
    let inv: Vec<Vec<usize>> = planted
        .iter()
        .map(|p| {
            let mut q = vec![0; p.len()];
            for (i, &j) in p.iter().enumerate() {
                q[j] = i;
            }
            q
        })
        .collect();
    let b = permute(&shapes, &a, &groups, &inv);
    let ta = tensors(&a, &shapes);
    let tb = tensors(&b, &shapes);
    let res = weight_matching(&groups, &ta, &tb, &options(100, false)).unwrap();
    assert_eq!(res.perms, planted);
    // Every parameter but the output bias is touched by a group.
    let self_match: f64 = a[..a.len() - 1]
        .iter()
        .flatten()
        .map(|x| (*x as f64) * (*x as f64))
        .sum();
    assert!((res.objective - self_match).abs() <= 1e-4 * self_match);
    // B permuted by the result is A again.
    let back = permute(&shapes, &b, &groups, &res.perms);
    assert_eq!(back, a);
}

#[test]
fn forward_pass_alone_recovers_a_permuted_copy_in_any_group_order() {
    let mut rng = Rng(4242);
    let (shapes, a, mut groups) = mlp(&[12, 64, 64, 64, 64, 5], &mut rng);
    let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
    let b = permute(&shapes, &a, &groups, &planted);
    // Listed from the output side: the pass must still start where the inputs are matched.
    groups.reverse();
    let ta = tensors(&a, &shapes);
    let tb = tensors(&b, &shapes);
    let opts = options(1, true);
    let res = weight_matching(&groups, &ta, &tb, &opts).unwrap();
    groups.reverse();
    let mut perms = res.perms.clone();
    perms.reverse();
    assert_eq!(permute(&shapes, &b, &groups, &perms), a);
    // One sweep after the pass found nothing to improve.
    assert_eq!(res.sweeps, 1);
}

#[test]
fn nested_heads_recover_a_permuted_attention_layer() {
    // x (8) -> embed (r=12) -> in-projection viewed (heads 4, head_dim 6, r) -> out-projection
    // (5, heads, head_dim). Heads and within-head units only ever appear together, so no
    // group is ready after the embedding: the head group is solved nested.
    let mut rng = Rng(99);
    let (h, d, r) = (4, 6, 12);
    let shapes = vec![vec![r, 8], vec![h, d, r], vec![5, h, d]];
    let data = random_tensors(&shapes, &mut rng);
    let groups = vec![
        group("d", d, vec![(1, 1), (2, 2)]),
        group("h", h, vec![(1, 0), (2, 1)]),
        group("r", r, vec![(0, 0), (1, 2)]),
    ];
    let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
    let b = permute(&shapes, &data, &groups, &planted);
    let (ta, tb) = (tensors(&data, &shapes), tensors(&b, &shapes));
    let opts = options(1, true);
    let res = weight_matching(&groups, &ta, &tb, &opts).unwrap();
    assert_eq!(permute(&shapes, &b, &groups, &res.perms), data);
    assert_eq!(res.sweeps, 1);
}

#[test]
fn heads_with_a_per_head_bias_wait_for_their_projections() {
    // As in LeViT: the heads also carry a per-head bias (4 x 7, its other axis fixed, zero at
    // init), always ready; the residual stream r comes last in the group order and is read by the
    // out-projection (r, heads, head_dim) before the heads. Solved from the bias alone, before
    // the stream, the heads were wrong and the sweeps stayed in that local optimum; the heads
    // now wait for the stream and are solved nested.
    for seed in 0..20 {
        let mut rng = Rng(seed);
        let (h, d, r) = (6, 4, 12);
        let shapes = vec![vec![r, 8], vec![h, d, r], vec![r, h, d], vec![h, 7]];
        let mut data = random_tensors(&shapes, &mut rng);
        // LeViT's biases start at zero: alone, they say nothing about the heads.
        data[3].fill(0.0);
        let groups = vec![
            group("h", h, vec![(1, 0), (2, 1), (3, 0)]),
            group("d", d, vec![(1, 1), (2, 2)]),
            group("r", r, vec![(0, 0), (1, 2), (2, 0)]),
        ];
        let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
        let b = permute(&shapes, &data, &groups, &planted);
        let (ta, tb) = (tensors(&data, &shapes), tensors(&b, &shapes));
        let res = weight_matching(&groups, &ta, &tb, &options(100, true)).unwrap();
        assert_eq!(
            permute(&shapes, &b, &groups, &res.perms),
            data,
            "seed {seed}"
        );
    }
}

#[test]
fn incremental_costs_equal_recomputed_costs() {
    let mut rng = Rng(777);
    // A conv-shaped parameter (out, in, 3, 3) between two groups, plus an MLP tail.
    let shapes = vec![
        vec![12, 3, 3, 3],
        vec![12],
        vec![16, 12, 3, 3],
        vec![16],
        vec![5, 16],
    ];
    let a: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| (0..s.iter().product()).map(|_| rng.normal()).collect())
        .collect();
    let b: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| (0..s.iter().product()).map(|_| rng.normal()).collect())
        .collect();
    let groups = vec![
        group("P_conv", 12, vec![(0, 0), (1, 0), (2, 1)]),
        group("P_tail", 16, vec![(2, 0), (3, 0), (4, 1)]),
    ];
    let ta = tensors(&a, &shapes);
    let tb = tensors(&b, &shapes);
    let lay = check(&groups, &ta, &tb, None).unwrap();
    let perms = groups.iter().map(|g| (0..g.size).collect()).collect();
    let mut eng = Engine::new(lay, perms, Par::Seq);
    for g in 0..2 {
        eng.refresh(g).unwrap();
    }
    for step in 0..12 {
        let h = step % 2;
        let old = eng.perms[h].clone();
        // Alternate a full shuffle (every unit moves) and a swap of two units.
        let new = if step % 4 < 2 {
            shuffled(groups[h].size, &mut rng)
        } else {
            let mut p = old.clone();
            p.swap(1, 2 + step % 8);
            p
        };
        let moved: Vec<usize> = (0..new.len()).filter(|&i| old[i] != new[i]).collect();
        eng.perms[h] = new;
        eng.propagate(h, &old, &moved).unwrap();
        for g in 0..2 {
            eng.refresh(g).unwrap();
            let full = eng.full_cost(g).unwrap();
            for (x, y) in eng.costs[g].iter().zip(&full) {
                assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}

/// Errors name the caller's groups and parameters, one variant per failure.
///
/// Long on purpose: one short case per `MatchError` variant, kept in one table of refusals.
#[test]
fn bad_input_is_refused() {
    fn named<'a>(data: &'a [Vec<f32>], shapes: &'a [Vec<usize>]) -> Vec<Tensor<'a>> {
        data.iter()
            .zip(shapes)
            .zip(["fc.weight", "fc.bias"])
            .map(|((d, s), name)| Tensor {
                name,
                data: d.into(),
                shape: s,
            })
            .collect()
    }
    let shapes = [vec![4, 3], vec![4]];
    let a = [vec![0.0f32; 12], vec![0.0f32; 4]];
    let t = named(&a, &shapes);
    let opts = options(10, false);
    let g = |size, members| {
        vec![Group {
            name: "P_fc".to_string(),
            size,
            members,
        }]
    };
    let err = |groups: &[Group], tb: &[Tensor<'_>], opts: &Options| {
        weight_matching(groups, &t, tb, opts).unwrap_err()
    };
    let e = err(&g(4, vec![(0, 1)]), &t, &opts);
    assert!(matches!(e, MatchError::AxisSize { axis: 1, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "group 'P_fc': has 4 units but axis 1 of parameter 'fc.weight' has size 3; every axis \
         of a group must have one size"
    );
    let e = err(&g(4, vec![(5, 0)]), &t, &opts);
    assert!(
        matches!(e, MatchError::NoSuchParam { index: 5, .. }),
        "{e:?}"
    );
    let e = err(&g(1, vec![(0, 0)]), &t, &opts);
    assert!(
        matches!(e, MatchError::TooFewUnits { size: 1, .. }),
        "{e:?}"
    );
    let e = err(&g(4, vec![]), &t, &opts);
    assert!(matches!(e, MatchError::NoMember { .. }), "{e:?}");
    let e = err(&g(4, vec![(0, 0), (0, 0)]), &t, &opts);
    assert!(matches!(e, MatchError::AxisTwice { .. }), "{e:?}");
    assert!(e.to_string().contains("also in group 'P_fc'"), "{e}");
    let e = err(&g(4, vec![(0, 2)]), &t, &opts);
    assert!(
        matches!(e, MatchError::AxisOutOfRange { axis: 2, .. }),
        "{e:?}"
    );
    let bad_init = Options {
        init: Some(vec![vec![0, 0, 1, 2]]),
        ..opts.clone()
    };
    let e = err(&g(4, vec![(0, 0)]), &t, &bad_init);
    assert_eq!(
        e,
        MatchError::BadInit {
            group: "P_fc".to_string(),
            size: 4
        }
    );
    let two_inits = Options {
        init: Some(vec![vec![0, 1, 2, 3]; 2]),
        ..opts.clone()
    };
    let e = err(&g(4, vec![(0, 0)]), &t, &two_inits);
    assert!(
        matches!(
            e,
            MatchError::InitCount {
                given: 2,
                groups: 1
            }
        ),
        "{e:?}"
    );
    let other = [vec![4usize, 2], vec![4]];
    let tb = named(&a, &other);
    let e = err(&g(4, vec![(0, 0)]), &tb, &opts);
    assert!(matches!(e, MatchError::ShapeMismatch { .. }), "{e:?}");
    assert!(e
        .to_string()
        .starts_with("parameter 'fc.weight': shape [4, 3] in model A"));
    let e = weight_matching(&g(4, vec![(0, 0)]), &t, &t[..1], &opts).unwrap_err();
    assert_eq!(e, MatchError::ParamCount { a: 2, b: 1 });
    // Unnamed groups and parameters are counted instead.
    let unnamed = vec![Group {
        name: String::new(),
        size: 4,
        members: vec![(0, 0), (0, 1)],
    }];
    let e = err(&unnamed, &t, &opts);
    assert!(e.to_string().starts_with("group '#0': "), "{e}");
    let e = group_cost(&g(4, vec![(0, 0)]), &t, &t, &[vec![0, 1, 2, 3]], 1).unwrap_err();
    assert_eq!(e, MatchError::NoSuchGroup { index: 1, count: 1 });
}

#[test]
fn non_finite_weights_and_refused_warm_starts_have_their_own_errors() {
    let mut rng = Rng(5);
    let (shapes, a, groups) = mlp(&[6, 8, 4], &mut rng);
    let mut b = a.clone();
    let opts = options(10, true);
    let first =
        weight_matching(&groups, &tensors(&a, &shapes), &tensors(&b, &shapes), &opts).unwrap();
    // A warm start with a repeated column is the solver's refusal, reported against the group.
    let mut warm = first.warm.clone();
    let w = warm[0].as_mut().unwrap();
    w.col_ind[1] = w.col_ind[0];
    let with_warm = Options {
        warm: Some(warm),
        forward: false,
        ..opts.clone()
    };
    let e = weight_matching(
        &groups,
        &tensors(&a, &shapes),
        &tensors(&b, &shapes),
        &with_warm,
    )
    .unwrap_err();
    match &e {
        MatchError::Assignment { group, source } => {
            assert_eq!(group, "P1");
            assert!(
                matches!(source, crate::LapError::BadWarmStart(_)),
                "{source:?}"
            );
        }
        _ => panic!("{e:?}"),
    }
    assert!(std::error::Error::source(&e).is_some());
    assert!(e.to_string().contains("assigned twice"), "{e}");
    // A NaN weight is found before any product, with the parameter that holds it.
    b[2][3] = f32::NAN;
    let e =
        weight_matching(&groups, &tensors(&a, &shapes), &tensors(&b, &shapes), &opts).unwrap_err();
    assert_eq!(
        e,
        MatchError::NonFinite {
            group: "P1".to_string(),
            param: "#2".to_string(),
            model: 'B'
        }
    );
    assert!(e.to_string().contains("NaN or inf"));
}

#[test]
fn timings_are_filled() {
    let mut rng = Rng(8);
    let (shapes, a, groups) = mlp(&[16, 32, 32, 8], &mut rng);
    let b: Vec<Vec<f32>> = a
        .iter()
        .map(|x| x.iter().map(|_| rng.normal()).collect())
        .collect();
    let opts = options(100, true);
    let res =
        weight_matching(&groups, &tensors(&a, &shapes), &tensors(&b, &shapes), &opts).unwrap();
    let t = res.timings;
    assert!(t.gemm > 0.0 && t.gather >= 0.0 && t.lap > 0.0 && t.forward > 0.0);
    assert!(t.total >= t.forward && t.total >= t.gemm + t.lap);
}

#[test]
fn orders_are_reproducible() {
    assert_eq!(visit_orders(5, 3, 4), visit_orders(5, 3, 4));
    let o = visit_orders(5, 3, 1);
    let mut s = o[0].clone();
    s.sort();
    assert_eq!(s, vec![0, 1, 2, 3, 4]);
}

#[test]
fn warm_starts_that_do_not_fit_never_change_the_result() {
    // Issue 12: every LAP of the sweeps is warm-started (from `Options::warm`, then from the
    // previous sweep); potentials far from the costs' scale must be set aside, not trusted.
    let mut rng = Rng(77);
    let (shapes, a, groups) = mlp(&[10, 24, 16, 6], &mut rng);
    let b: Vec<Vec<f32>> = a
        .iter()
        .map(|x| x.iter().map(|_| rng.normal()).collect())
        .collect();
    let (ta, tb) = (tensors(&a, &shapes), tensors(&b, &shapes));
    let cold = weight_matching(&groups, &ta, &tb, &options(100, false)).unwrap();
    assert!(cold.sweeps > 1);
    let poisoned = |f: &dyn Fn(usize, f64) -> f64, shuffle: bool| -> Vec<Option<LapSolution>> {
        groups
            .iter()
            .zip(&cold.warm)
            .map(|(g, w)| {
                let w = w.as_ref().unwrap();
                let mut col_ind: Vec<usize> = (0..g.size).collect();
                if shuffle {
                    col_ind = shuffled(g.size, &mut Rng(g.size as u64));
                }
                Some(LapSolution {
                    row_ind: (0..g.size).collect(),
                    col_ind,
                    objective: 0.0,
                    u: w.u.iter().enumerate().map(|(k, &x)| f(k, x)).collect(),
                    v: w.v.iter().enumerate().map(|(k, &x)| -f(k, x)).collect(),
                })
            })
            .collect()
    };
    let cases: Vec<Vec<Option<LapSolution>>> = vec![
        poisoned(&|_, x| x * 1e16, false),
        poisoned(&|_, _| 1e300, true),
        poisoned(&|k, _| if k % 2 == 0 { 1e300 } else { -1e300 }, true),
        // Potentials of the costs' own scale but unrelated to them: trusted, and harmless.
        poisoned(&|k, x| x * ((k % 5) as f64 - 2.0), true),
    ];
    for warm in cases {
        let opts = Options {
            warm: Some(warm),
            ..options(100, false)
        };
        let hot = weight_matching(&groups, &ta, &tb, &opts).unwrap();
        assert_eq!(hot.perms, cold.perms);
        assert_eq!(hot.history, cold.history);
    }
}

#[test]
fn tied_units_are_not_moved() {
    // Issue 12: ties must keep the identity. Model B is model A, whose hidden layers each hold
    // units that are exact copies of one another; any permutation among copies is as good, and
    // none may be made, by the sweeps or by the forward pass (whose solves are cold).
    let mut rng = Rng(99);
    let (shapes, mut a, groups) = mlp(&[6, 12, 10, 4], &mut rng);
    for l in 0..2 {
        let (w, bias, next) = (2 * l, 2 * l + 1, 2 * l + 2);
        let inputs = shapes[w][1];
        let outputs = shapes[next][0];
        let width = shapes[next][1];
        for copy in [1, 2, 5] {
            for k in 0..inputs {
                a[w][copy * inputs + k] = a[w][k];
            }
            a[bias][copy] = a[bias][0];
            for o in 0..outputs {
                a[next][o * width + copy] = a[next][o * width];
            }
        }
    }
    let ta = tensors(&a, &shapes);
    for forward in [false, true] {
        let res = weight_matching(&groups, &ta, &ta, &options(100, forward)).unwrap();
        for (g, p) in groups.iter().zip(&res.perms) {
            assert_eq!(p, &(0..g.size).collect::<Vec<_>>(), "forward {forward}");
        }
    }
}

#[test]
fn last_history_entry_is_the_objective() {
    // Issue 12: the history was tracked by float32 gains and ended ~1e-8 away from the objective.
    let mut rng = Rng(4242);
    let (shapes, a, groups) = mlp(&[64, 256, 256, 10], &mut rng);
    let (_, b, _) = mlp(&[64, 256, 256, 10], &mut rng);
    let (ta, tb) = (tensors(&a, &shapes), tensors(&b, &shapes));
    let res = weight_matching(&groups, &ta, &tb, &options(100, false)).unwrap();
    assert!(res.history.len() > 2);
    assert_eq!(res.history.last(), Some(&res.objective));
    assert!(
        res.history.windows(2).all(|w| w[0] <= w[1]),
        "{:?}",
        res.history
    );
}

/// A small network with every gather path: Linear weights (2-D, both axes), biases, and a
/// convolution pair whose 3x3 kernels are the fixed-size runs.
pub(super) fn mixed_net(rng: &mut Rng) -> (Vec<Vec<usize>>, Vec<Vec<f32>>, Vec<Group>) {
    let (mut shapes, mut data, mut groups) = mlp(&[12, 40, 24, 6], rng);
    let p = shapes.len();
    for s in [vec![16, 3, 3, 3], vec![16], vec![8, 16, 3, 3]] {
        data.push(
            (0..s.iter().product::<usize>())
                .map(|_| rng.normal())
                .collect(),
        );
        shapes.push(s);
    }
    groups.push(group("conv", 16, vec![(p, 0), (p + 1, 0), (p + 2, 1)]));
    (shapes, data, groups)
}

#[test]
fn half_precision_weights_give_the_result_of_their_float32_values() {
    // The engine reads float16/bfloat16 in place and widens them in its gathers: the result must
    // be that of the same values widened up front (exactly: widening is exact).
    let mut rng = Rng(4242);
    let (shapes, a, groups) = mixed_net(&mut rng);
    let b: Vec<Vec<f32>> = a
        .iter()
        .map(|t| t.iter().map(|_| rng.normal()).collect())
        .collect();
    let a16: Vec<Vec<f16>> = a
        .iter()
        .map(|t| t.iter().map(|&x| f16::from_f32(x)).collect())
        .collect();
    let b16: Vec<Vec<bf16>> = b
        .iter()
        .map(|t| t.iter().map(|&x| bf16::from_f32(x)).collect())
        .collect();
    let (a_wide, b_wide) = (widened(&a16), widened(&b16));
    for forward in [false, true] {
        let opts = options(100, forward);
        let wide = weight_matching(
            &groups,
            &tensors(&a_wide, &shapes),
            &tensors(&b_wide, &shapes),
            &opts,
        )
        .unwrap();
        let ta = half_tensors(&a16, &shapes, Data::F16);
        let tb = half_tensors(&b16, &shapes, Data::Bf16);
        let half = weight_matching(&groups, &ta, &tb, &opts).unwrap();
        assert_eq!(half.perms, wide.perms);
        assert_eq!(half.objective, wide.objective);
        assert_eq!(half.history, wide.history);
        for g in 0..groups.len() {
            let c_half = group_cost(&groups, &ta, &tb, &half.perms, g).unwrap();
            let c_wide = group_cost(
                &groups,
                &tensors(&a_wide, &shapes),
                &tensors(&b_wide, &shapes),
                &half.perms,
                g,
            )
            .unwrap();
            assert_eq!(c_half, c_wide);
        }
    }
    // A NaN stored in half precision is refused as in float32.
    let mut bad = b16.clone();
    bad[0][3] = bf16::NAN;
    let tb = half_tensors(&bad, &shapes, Data::Bf16);
    let err = weight_matching(
        &groups,
        &tensors(&a_wide, &shapes),
        &tb,
        &options(10, false),
    );
    assert!(matches!(err, Err(MatchError::NonFinite { model: 'B', .. })));
}

#[test]
fn a_large_half_precision_tensor_is_read_in_blocks_with_the_same_result() {
    // An embedding-like (vocab, width) tensor larger than one widening block, permuted on its
    // second axis: the product is summed over blocks of rows (same result up to float32
    // rounding), so no buffer holds the whole tensor widened.
    let mut rng = Rng(99);
    let (vocab, width, hidden) = (super::gather::WIDEN_BLOCK / 24 + 7, 24, 16);
    let shapes = vec![vec![vocab, width], vec![hidden, width], vec![hidden]];
    let (a, b) = (
        random_tensors(&shapes, &mut rng),
        random_tensors(&shapes, &mut rng),
    );
    let groups = vec![
        group("R", width, vec![(0, 1), (1, 1)]),
        group("H", hidden, vec![(1, 0), (2, 0)]),
    ];
    let half = |d: &[Vec<f32>]| -> Vec<Vec<bf16>> {
        d.iter()
            .map(|t| t.iter().map(|&x| bf16::from_f32(x)).collect())
            .collect()
    };
    let (ha, hb) = (half(&a), half(&b));
    let (wa, wb) = (widened(&ha), widened(&hb));
    let (ta, tb) = (
        half_tensors(&ha, &shapes, Data::Bf16),
        half_tensors(&hb, &shapes, Data::Bf16),
    );
    let opts = options(100, true);
    let r_half = weight_matching(&groups, &ta, &tb, &opts).unwrap();
    let r_wide = weight_matching(
        &groups,
        &tensors(&wa, &shapes),
        &tensors(&wb, &shapes),
        &opts,
    )
    .unwrap();
    assert_eq!(r_half.perms, r_wide.perms);
    assert!((r_half.objective - r_wide.objective).abs() <= 1e-9 * r_wide.objective.abs());
    let c_half = group_cost(&groups, &ta, &tb, &r_half.perms, 0).unwrap();
    let c_wide = group_cost(
        &groups,
        &tensors(&wa, &shapes),
        &tensors(&wb, &shapes),
        &r_half.perms,
        0,
    )
    .unwrap();
    let scale = c_wide.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (x, y) in c_half.iter().zip(&c_wide) {
        assert!((x - y).abs() <= 1e-5 * scale, "{x} vs {y}");
    }
}

#[test]
fn costs_dropped_under_a_memory_cap_give_the_same_matching() {
    // Groups whose cost does not fit the cap are recomputed at each visit instead of kept and
    // updated: the same permutations (recomputing equals updating up to float32 rounding).
    let mut rng = Rng(31337);
    let (shapes, a, groups) = mlp(&[20, 48, 40, 32, 10], &mut rng);
    let b: Vec<Vec<f32>> = a
        .iter()
        .map(|t| t.iter().map(|_| rng.normal()).collect())
        .collect();
    let (ta, tb) = (tensors(&a, &shapes), tensors(&b, &shapes));
    for forward in [false, true] {
        let all = weight_matching(&groups, &ta, &tb, &options(100, forward)).unwrap();
        for cap in [0, 4 * 32 * 32, 4 * (32 * 32 + 40 * 40)] {
            let opts = Options {
                max_cost_bytes: Some(cap),
                ..options(100, forward)
            };
            let capped = weight_matching(&groups, &ta, &tb, &opts).unwrap();
            assert_eq!(capped.perms, all.perms, "cap {cap}, forward {forward}");
            assert!((capped.objective - all.objective).abs() <= 1e-9 * all.objective.abs());
        }
    }
    assert_eq!(
        super::driver::kept_costs(&groups, 4 * 32 * 32),
        vec![false, false, true]
    );
}

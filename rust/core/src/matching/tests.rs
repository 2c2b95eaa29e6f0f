//! Planted permutations are recovered; incremental cost updates equal recomputation.

use super::*;

struct Rng(u64);
impl Rng {
    fn normal(&mut self) -> f32 {
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
fn mlp(sizes: &[usize], rng: &mut Rng) -> (Vec<Vec<usize>>, Vec<Vec<f32>>, Vec<Group>) {
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
            size,
            members: vec![(w, 0), (w + 1, 0), (w + 2, 1)],
        });
    }
    (shapes, data, groups)
}

/// Applies `perms` to B's parameters the way `apply_permutation` does: new[i] = old[perm[i]].
fn permute(
    shapes: &[Vec<usize>],
    data: &[Vec<f32>],
    groups: &[Group],
    perms: &[Vec<usize>],
) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = data.to_vec();
    for (g, group) in groups.iter().enumerate() {
        for &(p, k) in &group.members {
            let t = Tensor {
                data: &out[p],
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

fn tensors<'a>(data: &'a [Vec<f32>], shapes: &'a [Vec<usize>]) -> Vec<Tensor<'a>> {
    data.iter()
        .zip(shapes)
        .map(|(d, s)| Tensor { data: d, shape: s })
        .collect()
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
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
    let res = weight_matching(
        &groups,
        &ta,
        &tb,
        &Options {
            max_iter: 100,
            seed: 0,
            init: None,
            forward: false,
            warm: None,
        },
    )
    .unwrap();
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
    let opts = Options {
        max_iter: 1,
        seed: 0,
        init: None,
        forward: true,
        warm: None,
    };
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
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| {
            (0..s.iter().product::<usize>())
                .map(|_| rng.normal())
                .collect()
        })
        .collect();
    let groups = vec![
        Group {
            size: d,
            members: vec![(1, 1), (2, 2)],
        },
        Group {
            size: h,
            members: vec![(1, 0), (2, 1)],
        },
        Group {
            size: r,
            members: vec![(0, 0), (1, 2)],
        },
    ];
    let planted: Vec<Vec<usize>> = groups.iter().map(|g| shuffled(g.size, &mut rng)).collect();
    let b = permute(&shapes, &data, &groups, &planted);
    let (ta, tb) = (tensors(&data, &shapes), tensors(&b, &shapes));
    let opts = Options {
        max_iter: 1,
        seed: 0,
        init: None,
        forward: true,
        warm: None,
    };
    let res = weight_matching(&groups, &ta, &tb, &opts).unwrap();
    assert_eq!(permute(&shapes, &b, &groups, &res.perms), data);
    assert_eq!(res.sweeps, 1);
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
        Group {
            size: 12,
            members: vec![(0, 0), (1, 0), (2, 1)],
        },
        Group {
            size: 16,
            members: vec![(2, 0), (3, 0), (4, 1)],
        },
    ];
    let ta = tensors(&a, &shapes);
    let tb = tensors(&b, &shapes);
    let lay = check(&groups, &ta, &tb, None).unwrap();
    let perms = groups.iter().map(|g| (0..g.size).collect()).collect();
    let mut eng = Engine::new(lay, perms, Par::Seq);
    for g in 0..2 {
        eng.refresh(g);
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
        eng.propagate(h, &old, &moved);
        for g in 0..2 {
            eng.refresh(g);
            let full = eng.full_cost(g);
            for (x, y) in eng.costs[g].iter().zip(&full) {
                assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}

#[test]
fn bad_input_is_refused() {
    let shapes = [vec![4, 3], vec![4]];
    let a = [vec![0.0f32; 12], vec![0.0f32; 4]];
    let t: Vec<Tensor> = a
        .iter()
        .zip(&shapes)
        .map(|(d, s)| Tensor { data: d, shape: s })
        .collect();
    let opts = Options {
        max_iter: 10,
        seed: 0,
        init: None,
        forward: false,
        warm: None,
    };
    let g = |size, members| vec![Group { size, members }];
    assert!(matches!(
        weight_matching(&g(4, vec![(0, 1)]), &t, &t, &opts),
        Err(MatchError::BadGroup { .. })
    ));
    assert!(matches!(
        weight_matching(&g(4, vec![(5, 0)]), &t, &t, &opts),
        Err(MatchError::BadGroup { .. })
    ));
    assert!(matches!(
        weight_matching(&g(1, vec![(0, 0)]), &t, &t, &opts),
        Err(MatchError::BadGroup { .. })
    ));
    assert!(matches!(
        weight_matching(&g(4, vec![(0, 0), (0, 0)]), &t, &t, &opts),
        Err(MatchError::BadGroup { .. })
    ));
    assert!(matches!(
        weight_matching(&g(4, vec![(0, 2)]), &t, &t, &opts),
        Err(MatchError::BadGroup { .. })
    ));
    let bad_init = Options {
        init: Some(vec![vec![0, 0, 1, 2]]),
        ..opts.clone()
    };
    assert!(matches!(
        weight_matching(&g(4, vec![(0, 0)]), &t, &t, &bad_init),
        Err(MatchError::BadInit { .. })
    ));
    let other = [vec![4usize, 2], vec![4]];
    let tb: Vec<Tensor> = a
        .iter()
        .zip(&other)
        .map(|(d, s)| Tensor { data: d, shape: s })
        .collect();
    assert!(matches!(
        weight_matching(&g(4, vec![(0, 0)]), &t, &tb, &opts),
        Err(MatchError::BadParam { .. })
    ));
}

#[test]
fn orders_are_reproducible() {
    assert_eq!(visit_orders(5, 3, 4), visit_orders(5, 3, 4));
    let o = visit_orders(5, 3, 1);
    let mut s = o[0].clone();
    s.sort();
    assert_eq!(s, vec![0, 1, 2, 3, 4]);
}

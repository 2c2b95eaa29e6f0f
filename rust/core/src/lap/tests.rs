//! Brute-force comparisons for small problems and checks of the dual certificate.

use super::*;
use proptest::prelude::*;

/// Runs `f` with the tight-pair phase forced on this thread.
fn with_tight_forced<R>(f: impl FnOnce() -> R) -> R {
    use super::solver::FORCE_TIGHT;
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCE_TIGHT.with(|c| c.set(false));
        }
    }
    let _reset = Reset;
    FORCE_TIGHT.with(|c| c.set(true));
    f()
}

/// Best total over all assignments of the smaller side (None when every one hits a forbidden entry).
fn brute_force(c: &[f64], rows: usize, cols: usize, maximize: bool) -> Option<f64> {
    // Orient so that rows are the smaller side.
    let (n, m, a): (usize, usize, Vec<f64>) = if rows <= cols {
        (rows, cols, c.to_vec())
    } else {
        let t = (0..rows * cols)
            .map(|k| c[(k % rows) * cols + k / rows])
            .collect();
        (cols, rows, t)
    };
    struct Search<'a> {
        n: usize,
        m: usize,
        a: &'a [f64],
        used: Vec<bool>,
        best: Option<f64>,
        maximize: bool,
    }
    impl Search<'_> {
        fn rec(&mut self, i: usize, acc: f64) {
            if i == self.n {
                let better = match self.best {
                    None => true,
                    Some(b) => (self.maximize && acc > b) || (!self.maximize && acc < b),
                };
                if better {
                    self.best = Some(acc);
                }
                return;
            }
            for j in 0..self.m {
                let x = self.a[i * self.m + j];
                if self.used[j] || x.is_infinite() {
                    continue;
                }
                self.used[j] = true;
                self.rec(i + 1, acc + x);
                self.used[j] = false;
            }
        }
    }
    let mut s = Search {
        n,
        m,
        a: &a,
        used: vec![false; m],
        best: None,
        maximize,
    };
    s.rec(0, 0.0);
    s.best
}

/// The assignment is a matching of the smaller side, its objective is its cost, and the potentials
/// certify optimality.
fn check_certificate(c: &[f64], rows: usize, cols: usize, maximize: bool, s: &LapSolution) {
    let k = rows.min(cols);
    assert_eq!(s.row_ind.len(), k);
    assert!(s.row_ind.windows(2).all(|w| w[0] < w[1]));
    let mut seen = vec![false; cols];
    let mut total = 0.0;
    for (&i, &j) in s.row_ind.iter().zip(&s.col_ind) {
        assert!(!seen[j]);
        seen[j] = true;
        total += c[i * cols + j];
    }
    assert_eq!(total, s.objective);
    let sign = if maximize { -1.0 } else { 1.0 };
    let scale = c
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |a, x| a.max(x.abs()));
    let tol = 1e-9 * scale * (rows + cols) as f64;
    for i in 0..rows {
        for j in 0..cols {
            let r = sign * (c[i * cols + j] - s.u[i] - s.v[j]);
            assert!(r >= -tol, "reduced cost {r} at ({i},{j})");
        }
    }
    for (&i, &j) in s.row_ind.iter().zip(&s.col_ind) {
        let r = c[i * cols + j] - s.u[i] - s.v[j];
        assert!(r.abs() <= tol, "assigned pair ({i},{j}) not tight: {r}");
    }
    // Unassigned elements of the larger side have zero potential.
    if rows < cols {
        for j in 0..cols {
            if !seen[j] {
                assert_eq!(s.v[j], 0.0);
            }
        }
    }
}

fn matrix(max_n: usize) -> impl Strategy<Value = (usize, usize, Vec<f64>)> {
    (1..=max_n, 1..=max_n).prop_flat_map(|(r, c)| {
        let entry = prop_oneof![
            6 => (0i32..4).prop_map(|x| x as f64),
            6 => -100.0f64..100.0,
            1 => Just(f64::INFINITY),
        ];
        (Just(r), Just(c), proptest::collection::vec(entry, r * c))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn matches_brute_force((rows, cols, c) in matrix(7), maximize in any::<bool>()) {
        let c: Vec<f64> = if maximize {
            c.iter().map(|x| if x.is_infinite() { f64::NEG_INFINITY } else { *x }).collect()
        } else {
            c
        };
        let expect = brute_force(&c, rows, cols, maximize);
        match (solve(&c, rows, cols, maximize, None), expect) {
            (Ok(s), Some(best)) => {
                prop_assert!((s.objective - best).abs() <= 1e-9 * best.abs().max(1.0),
                    "objective {} vs brute force {}", s.objective, best);
                check_certificate(&c, rows, cols, maximize, &s);
            }
            (Err(LapError::Infeasible), None) => {}
            (got, want) => prop_assert!(false, "got {:?}, brute force {:?}", got, want),
        }
    }

    #[test]
    fn warm_start_gives_the_same_optimum(
        (rows, cols, c) in matrix(7),
        noise in proptest::collection::vec(-3.0f64..3.0, 49),
        maximize in any::<bool>(),
    ) {
        let c: Vec<f64> = c.iter().map(|x| if x.is_infinite() { 1.0 } else { *x }).collect();
        let first = solve(&c, rows, cols, maximize, None).unwrap();
        let c2: Vec<f64> = c.iter().zip(&noise).map(|(a, b)| a + b.round()).collect();
        let mut r2c = vec![-1i64; rows];
        for (&i, &j) in first.row_ind.iter().zip(&first.col_ind) {
            r2c[i] = j as i64;
        }
        let warm = WarmStart { row_to_col: &r2c, u: &first.u, v: &first.v };
        let cold = solve(&c2, rows, cols, maximize, None).unwrap();
        let hot = solve(&c2, rows, cols, maximize, Some(warm)).unwrap();
        prop_assert!((hot.objective - cold.objective).abs() <= 1e-9 * cold.objective.abs().max(1.0));
        check_certificate(&c2, rows, cols, maximize, &hot);
    }

    /// Any warm start that passes the shape checks, however unrelated to the matrix (a random
    /// assignment, potentials of any magnitude up to 1e300), reaches the cold optimum with a valid
    /// certificate: potentials that do not fit the matrix are set aside, never trusted.
    #[test]
    fn adversarial_warm_starts_reach_the_optimum(
        (rows, cols, c) in matrix(7),
        perm_seed in any::<u64>(),
        duals in proptest::collection::vec(-1.0f64..1.0, 14),
        exponent in prop_oneof![-3i32..4, 4i32..300],
        maximize in any::<bool>(),
    ) {
        let c: Vec<f64> = if maximize {
            c.iter().map(|x| if x.is_infinite() { f64::NEG_INFINITY } else { *x }).collect()
        } else {
            c
        };
        let k = rows.min(cols);
        let mut cols_order: Vec<usize> = (0..cols).collect();
        let mut s = perm_seed | 1;
        for i in (1..cols).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            cols_order.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut r2c = vec![-1i64; rows];
        for i in 0..k {
            r2c[(i + perm_seed as usize % rows) % rows] = cols_order[i] as i64;
        }
        let scale = 10f64.powi(exponent);
        let u: Vec<f64> = duals[..rows].iter().map(|x| x * scale).collect();
        let v: Vec<f64> = duals[7..7 + cols].iter().map(|x| x * scale).collect();
        let warm = WarmStart { row_to_col: &r2c, u: &u, v: &v };
        let expect = brute_force(&c, rows, cols, maximize);
        match (solve(&c, rows, cols, maximize, Some(warm)), expect) {
            (Ok(s), Some(best)) => {
                prop_assert!((s.objective - best).abs() <= 1e-9 * best.abs().max(1.0),
                    "objective {} vs brute force {}", s.objective, best);
                check_certificate(&c, rows, cols, maximize, &s);
            }
            (Err(LapError::Infeasible), None) => {}
            (got, want) => prop_assert!(false, "got {:?}, brute force {:?}", got, want),
        }
    }

    /// Entries near the float maximum: the differences the solver takes would overflow, so it
    /// solves a scaled copy; the optimum is the one of the matrix scaled down by hand.
    #[test]
    fn entries_near_the_float_maximum(
        (rows, cols, c) in matrix(6),
        maximize in any::<bool>(),
    ) {
        let big: Vec<f64> = c.iter().map(|x| {
            if x.is_infinite() { if maximize { f64::NEG_INFINITY } else { *x } }
            else { x / 100.0 * 1.79e308 }
        }).collect();
        let small: Vec<f64> = big.iter().map(|x| x * 2f64.powi(-128)).collect();
        match (solve(&big, rows, cols, maximize, None), solve(&small, rows, cols, maximize, None)) {
            (Ok(a), Ok(b)) => {
                let total: f64 = a.row_ind.iter().zip(&a.col_ind)
                    .map(|(&i, &j)| small[i * cols + j]).sum();
                prop_assert!((total - b.objective).abs() <= 1e-12 * b.objective.abs().max(1e-300),
                    "{} vs {}", total, b.objective);
                // The certificate, checked on the scaled matrix where it cannot overflow.
                if a.u.iter().chain(&a.v).all(|x| x.is_finite()) {
                    let down = |x: &[f64]| x.iter().map(|y| y * 2f64.powi(-128)).collect::<Vec<_>>();
                    let s = LapSolution { u: down(&a.u), v: down(&a.v), objective: total, ..a };
                    check_certificate(&small, rows, cols, maximize, &s);
                }
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
        }
    }

    /// The tight-pair phase, forced before every search, against brute force (it otherwise
    /// runs only on large tie-heavy problems).
    #[test]
    fn tight_phase_matches_brute_force((rows, cols, c) in matrix(7), maximize in any::<bool>()) {
        let c: Vec<f64> = if maximize {
            c.iter().map(|x| if x.is_infinite() { f64::NEG_INFINITY } else { *x }).collect()
        } else {
            c
        };
        let expect = brute_force(&c, rows, cols, maximize);
        let got = with_tight_forced(|| solve(&c, rows, cols, maximize, None));
        match (got, expect) {
            (Ok(s), Some(best)) => {
                prop_assert!((s.objective - best).abs() <= 1e-9 * best.abs().max(1.0),
                    "objective {} vs brute force {}", s.objective, best);
                check_certificate(&c, rows, cols, maximize, &s);
            }
            (Err(LapError::Infeasible), None) => {}
            (got, want) => prop_assert!(false, "got {:?}, brute force {:?}", got, want),
        }
    }

    #[test]
    fn float32_agrees_with_float64((rows, cols, c) in matrix(6)) {
        let c32: Vec<f32> = c.iter().map(|x| *x as f32).collect();
        let c64: Vec<f64> = c32.iter().map(|x| *x as f64).collect();
        match (solve(&c32, rows, cols, false, None), solve(&c64, rows, cols, false, None)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.objective, b.objective),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
        }
    }
}

#[test]
fn exhaustive_small_integer_matrices() {
    // Every 3x3 matrix over {0, 1, 2} (3^9 of them), in both senses.
    for code in 0..3usize.pow(9) {
        let c: Vec<f64> = (0..9)
            .map(|k| ((code / 3usize.pow(k)) % 3) as f64)
            .collect();
        for maximize in [false, true] {
            let s = solve(&c, 3, 3, maximize, None).unwrap();
            assert_eq!(Some(s.objective), brute_force(&c, 3, 3, maximize));
            check_certificate(&c, 3, 3, maximize, &s);
        }
    }
}

#[test]
fn errors_name_the_problem() {
    assert!(matches!(
        solve(&[1.0, 2.0, 3.0], 2, 2, false, None),
        Err(LapError::ShapeMismatch { .. })
    ));
    let e = solve(&[1.0, f64::NAN, 3.0, 4.0], 2, 2, false, None).unwrap_err();
    assert!(matches!(
        e,
        LapError::InvalidEntry {
            row: 0,
            col: 1,
            allowed: "+inf",
            ..
        }
    ));
    assert!(e.to_string().contains("(0, 1)"));
    assert!(matches!(
        solve(&[1.0, f64::NEG_INFINITY], 1, 2, false, None),
        Err(LapError::InvalidEntry { row: 0, col: 1, .. })
    ));
    assert!(matches!(
        solve(&[1.0, f64::INFINITY], 1, 2, true, None),
        Err(LapError::InvalidEntry { .. })
    ));
    let inf = f64::INFINITY;
    assert_eq!(
        solve(&[1.0, inf, 2.0, inf], 2, 2, false, None),
        Err(LapError::Infeasible)
    );
    assert_eq!(
        solve(&[inf, inf, 1.0, 2.0], 2, 2, false, None),
        Err(LapError::Infeasible)
    );
    // Rectangular: two rows competing for the only allowed column.
    assert_eq!(
        solve(&[1.0, inf, inf, 2.0, inf, inf], 2, 3, false, None),
        Err(LapError::Infeasible)
    );
}

#[test]
fn empty_and_single() {
    let s = solve::<f64>(&[], 0, 5, false, None).unwrap();
    assert!(s.row_ind.is_empty() && s.v.len() == 5);
    let s = solve(&[7.5], 1, 1, false, None).unwrap();
    assert_eq!((s.row_ind, s.col_ind, s.objective), (vec![0], vec![0], 7.5));
}

#[test]
fn bad_warm_starts_are_refused() {
    let c = [1.0, 2.0, 3.0, 4.0];
    let u = [0.0, 0.0];
    let v = [0.0, 0.0];
    for r2c in [[0i64, 0], [2, 1], [-2, 0]] {
        let w = WarmStart {
            row_to_col: &r2c,
            u: &u,
            v: &v,
        };
        assert!(matches!(
            solve(&c, 2, 2, false, Some(w)),
            Err(LapError::BadWarmStart(_))
        ));
    }
    let w = WarmStart {
        row_to_col: &[0],
        u: &[0.0],
        v: &[0.0, 0.0],
    };
    assert!(matches!(
        solve(&c, 2, 2, false, Some(w)),
        Err(LapError::BadWarmStart(_))
    ));
    let w = WarmStart {
        row_to_col: &[0, 1],
        u: &u,
        v: &[f64::NAN, 0.0],
    };
    assert!(matches!(
        solve(&c, 2, 2, false, Some(w)),
        Err(LapError::BadWarmStart(_))
    ));
}

/// A deterministic pseudo-random matrix (xorshift), large enough to exercise every phase.
pub(super) fn pseudo_random(n: usize, m: usize, seed: u64, levels: Option<u64>) -> Vec<f64> {
    let mut s = seed | 1;
    (0..n * m)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match levels {
                Some(l) => (s % l) as f64,
                None => (s >> 11) as f64 / (1u64 << 53) as f64,
            }
        })
        .collect()
}

#[test]
fn larger_problems_have_valid_certificates() {
    for (n, m, levels) in [
        (200, 200, None),
        (150, 300, None),
        (300, 120, None),
        (256, 256, Some(3)),
        (100, 180, Some(2)),
    ] {
        let c = pseudo_random(n, m, (n * m) as u64, levels);
        for maximize in [false, true] {
            let s = solve(&c, n, m, maximize, None).unwrap();
            check_certificate(&c, n, m, maximize, &s);
            let c32: Vec<f32> = c.iter().map(|x| *x as f32).collect();
            let s32 = solve(&c32, n, m, maximize, None).unwrap();
            let c64: Vec<f64> = c32.iter().map(|x| *x as f64).collect();
            check_certificate(&c64, n, m, maximize, &s32);
        }
    }
}

#[test]
fn deterministic() {
    let c = pseudo_random(300, 300, 7, Some(5));
    let a = solve(&c, 300, 300, false, None).unwrap();
    let b = solve(&c, 300, 300, false, None).unwrap();
    assert_eq!(a, b);
}

#[test]
fn warm_start_of_a_rescaled_matrix_is_not_trusted() {
    // Issue 12: the solution of the matrix times 1e16 reused on a matrix of entries in [0, 1)
    // kept its potentials, and rounding at 1e16 gave a wrong optimum with a wrong certificate.
    let n = 50;
    let big: Vec<f64> = pseudo_random(n, n, 11, None)
        .iter()
        .map(|x| x * 1e16)
        .collect();
    let c = pseudo_random(n, n, 12, None);
    let first = solve(&big, n, n, false, None).unwrap();
    let r2c: Vec<i64> = first.col_ind.iter().map(|&j| j as i64).collect();
    let cold = solve(&c, n, n, false, None).unwrap();
    for (u, v) in [
        (first.u.clone(), first.v.clone()),
        (vec![1e300; n], vec![-1e300; n]),
        (
            vec![0.0; n],
            (0..n).map(|j| j as f64 * 1e300 / n as f64).collect(),
        ),
    ] {
        let w = WarmStart {
            row_to_col: &r2c,
            u: &u,
            v: &v,
        };
        let hot = solve(&c, n, n, false, Some(w)).unwrap();
        assert_eq!(hot.objective, cold.objective);
        check_certificate(&c, n, n, false, &hot);
    }
}

#[test]
fn warm_start_never_keeps_a_forbidden_pair() {
    // Row 1 has no allowed entry: infeasible, even though the warm start assigns it.
    let inf = f64::INFINITY;
    let c = [1.0, 2.0, inf, inf];
    let w = WarmStart {
        row_to_col: &[0, 1],
        u: &[0.0, 0.0],
        v: &[0.0, 0.0],
    };
    assert_eq!(solve(&c, 2, 2, false, Some(w)), Err(LapError::Infeasible));
}

#[test]
fn entries_near_the_float_maximum_are_solved() {
    // Issue 12: called infeasible (1.7e308 - (-1.7e308) overflowed), now solved like scipy.
    let c = [-1.7e308, -1.7e308, 1.7e308, 1.7e308];
    for maximize in [false, true] {
        let s = solve(&c, 2, 2, maximize, None).unwrap();
        assert_eq!(s.objective, 0.0);
        // The balanced potentials fit in a float.
        assert!(s.u.iter().chain(&s.v).all(|x| x.is_finite()), "{s:?}");
    }
    // Wide and tall, with a forbidden entry.
    let inf = f64::INFINITY;
    let c = [1.7e308, -1.7e308, inf, 1e308, 0.0, -1e308];
    let s = solve(&c, 2, 3, false, None).unwrap();
    assert_eq!(
        (s.col_ind.clone(), s.objective),
        (vec![1, 2], -1.7e308 - 1e308)
    );
    let t = solve(&transpose(&c, 2, 3), 3, 2, false, None).unwrap();
    assert_eq!((t.row_ind, t.col_ind), (vec![1, 2], vec![0, 1]));
}

#[test]
fn ties_keep_the_identity_like_scipy() {
    // Issue 12: a constant 8x8 matrix gave [7, 0, 5, 6, 1, 2, 3, 4]; scipy gives the identity, and
    // weight matching must not move units for nothing. Wide and tall: the first rows (columns)
    // in order, as scipy.
    for (n, m) in [
        (8, 8),
        (1, 1),
        (3, 5),
        (5, 3),
        (300, 300),
        (200, 280),
        (280, 200),
    ] {
        for maximize in [false, true] {
            let c = vec![2.5f64; n * m];
            let s = solve(&c, n, m, maximize, None).unwrap();
            let k = n.min(m);
            assert_eq!(s.row_ind, (0..k).collect::<Vec<_>>(), "{n}x{m}");
            assert_eq!(s.col_ind, (0..k).collect::<Vec<_>>(), "{n}x{m}");
        }
    }
    // Whenever every column's minimum is on the diagonal, the identity is optimal and is the answer.
    for seed in 1..20u64 {
        let n = 5 + seed as usize * 13;
        let mut c = pseudo_random(n, n, seed, Some(4));
        for j in 0..n {
            let low = (0..n).map(|i| c[i * n + j]).fold(f64::INFINITY, f64::min);
            c[j * n + j] = low;
        }
        let s = solve(&c, n, n, false, None).unwrap();
        assert_eq!(s.col_ind, (0..n).collect::<Vec<_>>(), "seed {seed}");
    }
}

#[test]
fn tie_heavy_matrices_have_valid_certificates() {
    // Few distinct values exercise the free-column rules of the row reduction and of the
    // shortest paths (a tie ends at a free column); the optimum must not change.
    for (n, m, levels) in [
        (400, 400, 1),
        (400, 400, 2),
        (333, 400, 2),
        (400, 333, 4),
        (300, 300, 10),
        (257, 700, 3),
        // Integers in a range a few times smaller than the matrix: rows left at ties go through
        // the tight-pair phase.
        (600, 600, 150),
        (500, 640, 120),
        (640, 500, 120),
    ] {
        let c = pseudo_random(n, m, (n + m + levels) as u64, Some(levels as u64));
        for maximize in [false, true] {
            let s = solve(&c, n, m, maximize, None).unwrap();
            check_certificate(&c, n, m, maximize, &s);
        }
    }
}

#[test]
fn row_check_finds_invalid_and_huge_entries() {
    use super::kernels::{check_row, finite_absmax, RowCheck};
    let ninf = f64::NEG_INFINITY;
    for len in [1usize, 7, 1023, 1024, 1025, 3000] {
        let mut row = vec![1.0f64; len];
        assert_eq!(check_row(&row, ninf, HUGE), RowCheck::Valid { huge: false });
        // A forbidden entry is neither invalid nor huge, and not part of the scale.
        row[len - 1] = f64::INFINITY;
        assert_eq!(check_row(&row, ninf, HUGE), RowCheck::Valid { huge: false });
        assert_eq!(finite_absmax(&row), if len > 1 { 1.0 } else { 0.0 });
        row[len / 2] = -1e300;
        assert_eq!(check_row(&row, ninf, HUGE), RowCheck::Valid { huge: true });
        assert_eq!(finite_absmax(&row), 1e300);
        row[len / 3] = f64::NAN;
        assert_eq!(check_row(&row, ninf, HUGE), RowCheck::Invalid(len / 3));
        row[len / 3] = ninf;
        assert_eq!(check_row(&row, ninf, HUGE), RowCheck::Invalid(len / 3));
        let row32 = vec![3.0e38f32; len];
        assert_eq!(
            check_row(&row32, ninf, HUGE),
            RowCheck::Valid { huge: false }
        );
    }
}

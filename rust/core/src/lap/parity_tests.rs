//! The portable and the AVX2 kernels do the same arithmetic, bit for bit: whole solves on either
//! path give identical assignments, objectives and potentials, and each kernel gives identical
//! outputs. On a CPU without AVX2 only the portable path exists and the tests say so and pass.

use super::dispatch::FORCE_PORTABLE;
use super::tests::pseudo_random;
use super::*;

/// Whether the AVX2 path can run here; prints why the comparison is skipped when it cannot.
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return true;
    }
    eprintln!("note: this CPU has no AVX2; the portable and AVX2 kernels are not compared");
    false
}

/// Runs `f` with the portable kernels forced on this thread.
fn portable<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCE_PORTABLE.with(|p| p.set(false));
        }
    }
    FORCE_PORTABLE.with(|p| p.set(true));
    let _reset = Reset;
    f()
}

fn bits(x: &[f64]) -> Vec<u64> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Identical results: the same error, or the same pairs and bit-identical objective and duals.
fn assert_identical(
    a: &Result<LapSolution, LapError>,
    b: &Result<LapSolution, LapError>,
    what: &str,
) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.row_ind, b.row_ind, "{what}: rows");
            assert_eq!(a.col_ind, b.col_ind, "{what}: columns");
            assert_eq!(
                a.objective.to_bits(),
                b.objective.to_bits(),
                "{what}: objective"
            );
            assert_eq!(bits(&a.u), bits(&b.u), "{what}: u");
            assert_eq!(bits(&a.v), bits(&b.v), "{what}: v");
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// Solves cold on both paths, then warm from the solution after a perturbation, on both paths.
fn compare<T: CostValue>(c: &[T], perturbed: &[T], n: usize, m: usize, what: &str) {
    for maximize in [false, true] {
        let what = format!("{what}, maximize={maximize}");
        let fast = solve(c, n, m, maximize, None);
        let slow = portable(|| solve(c, n, m, maximize, None));
        assert_identical(&fast, &slow, &what);
        let Ok(first) = fast else { continue };
        let r2c: Vec<i64> = {
            let mut r = vec![-1i64; n];
            for (&i, &j) in first.row_ind.iter().zip(&first.col_ind) {
                r[i] = j as i64;
            }
            r
        };
        let warm = || {
            Some(WarmStart {
                row_to_col: &r2c,
                u: &first.u,
                v: &first.v,
            })
        };
        let fast = solve(perturbed, n, m, maximize, warm());
        let slow = portable(|| solve(perturbed, n, m, maximize, warm()));
        assert_identical(&fast, &slow, &format!("{what}, warm"));
    }
}

/// `c` with every `every`-th entry `+inf`: forbidden pairs when minimising, an invalid entry when
/// maximising (both paths must then refuse it alike).
fn with_forbidden(mut c: Vec<f64>, every: usize) -> Vec<f64> {
    for x in c.iter_mut().step_by(every) {
        *x = f64::INFINITY;
    }
    c
}

#[test]
fn whole_solves_agree_bit_for_bit() {
    if !avx2_available() {
        return;
    }
    // Sizes around the 4- and 8-lane widths, rectangular both ways, and past the width from which
    // candidate lists are used.
    let shapes = [
        (1, 1),
        (3, 5),
        (7, 7),
        (9, 13),
        (13, 9),
        (31, 33),
        (64, 64),
        (67, 67),
        (100, 257),
        (300, 300),
        (260, 203),
    ];
    for (k, &(n, m)) in shapes.iter().enumerate() {
        for levels in [None, Some(4), Some(2)] {
            let seed = (k as u64 + 1) * 7919;
            let c = pseudo_random(n, m, seed, levels);
            let noise = pseudo_random(n, m, seed + 1, None);
            let perturbed: Vec<f64> = c.iter().zip(&noise).map(|(x, e)| x + 0.01 * e).collect();
            let what = format!("{n}x{m}, levels {levels:?}");
            compare(&c, &perturbed, n, m, &format!("f64 {what}"));
            let c32: Vec<f32> = c.iter().map(|&x| x as f32).collect();
            let p32: Vec<f32> = perturbed.iter().map(|&x| x as f32).collect();
            compare(&c32, &p32, n, m, &format!("f32 {what}"));
            let f = with_forbidden(c.clone(), 11);
            let pf = with_forbidden(perturbed.clone(), 11);
            compare(&f, &pf, n, m, &format!("f64 forbidden {what}"));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernels_side_by_side {
    use super::super::kernels::{self, avx2};
    use super::*;

    // The AVX2 kernels are `#[inline(always)]` bodies meant to be inlined into a function compiled
    // for AVX2, as `dispatch::solve_avx2` does; these wrappers are such functions.

    /// # Safety
    /// AVX2 available.
    #[target_feature(enable = "avx2")]
    unsafe fn row_min2<T: CostValue, const MAX: bool>(row: &[T], v: &[f64]) -> (f64, usize, f64) {
        avx2::row_min2::<T, MAX>(row, v)
    }

    /// # Safety
    /// AVX2 available.
    #[target_feature(enable = "avx2")]
    unsafe fn dijkstra_init<T: CostValue, const MAX: bool>(
        row: &[T],
        v: &[f64],
        dd: &mut [f64],
    ) -> kernels::Argmin {
        avx2::dijkstra_init::<T, MAX>(row, v, dd)
    }

    /// # Safety
    /// AVX2 available.
    #[target_feature(enable = "avx2")]
    unsafe fn dijkstra_scan<T: CostValue, const MAX: bool>(
        row: &[T],
        v: &[f64],
        dd: &mut [f64],
        h: f64,
    ) -> kernels::Argmin {
        avx2::dijkstra_scan::<T, MAX>(row, v, dd, h)
    }

    fn key3(x: (f64, usize, f64)) -> (u64, usize, u64) {
        (x.0.to_bits(), x.1, x.2.to_bits())
    }

    fn key2(x: kernels::Argmin) -> (u64, usize, bool) {
        (x.0.to_bits(), x.1, x.2)
    }

    fn each_kernel<T: CostValue, const MAX: bool>(row: &[T], v: &[f64], dd0: &[f64], h: f64) {
        let m = row.len();
        // SAFETY: the caller checked that the CPU has AVX2.
        let fast = unsafe { row_min2::<T, MAX>(row, v) };
        let slow = kernels::row_min2::<T, MAX>(row, v);
        assert_eq!(key3(fast), key3(slow), "row_min2, m = {m}");
        let (mut d_fast, mut d_slow) = (vec![0.0; m], vec![0.0; m]);
        // SAFETY: as above.
        let fast = unsafe { dijkstra_init::<T, MAX>(row, v, &mut d_fast) };
        let slow = kernels::dijkstra_init::<T, MAX>(row, v, &mut d_slow);
        assert_eq!(key2(fast), key2(slow), "dijkstra_init, m = {m}");
        assert_eq!(bits(&d_fast), bits(&d_slow), "dijkstra_init dd, m = {m}");
        let (mut d_fast, mut d_slow) = (dd0.to_vec(), dd0.to_vec());
        // SAFETY: as above.
        let fast = unsafe { dijkstra_scan::<T, MAX>(row, v, &mut d_fast, h) };
        let slow = kernels::dijkstra_scan::<T, MAX>(row, v, &mut d_slow, h);
        assert_eq!(key2(fast), key2(slow), "dijkstra_scan, m = {m}");
        assert_eq!(bits(&d_fast), bits(&d_slow), "dijkstra_scan dd, m = {m}");
    }

    #[test]
    fn kernels_agree_bit_for_bit() {
        if !avx2_available() {
            return;
        }
        let lengths = (1..=20).chain([31, 32, 33, 64, 67, 300]);
        for (k, m) in lengths.enumerate() {
            for levels in [None, Some(3), Some(1)] {
                let seed = 1 + k as u64 * 104_729;
                let mut row = pseudo_random(1, m, seed, levels);
                // A forbidden entry of each sign now and then.
                if m > 5 {
                    row[m / 3] = f64::INFINITY;
                    row[m - 2] = f64::NEG_INFINITY;
                }
                let v: Vec<f64> = pseudo_random(1, m, seed + 1, levels)
                    .iter()
                    .map(|x| -x)
                    .collect();
                // Scanned columns hold -inf; the others a tentative distance.
                let dd: Vec<f64> = pseudo_random(1, m, seed + 2, None)
                    .iter()
                    .enumerate()
                    .map(|(j, x)| {
                        if j % 5 == 1 {
                            f64::NEG_INFINITY
                        } else {
                            x + 0.5
                        }
                    })
                    .collect();
                let h = 0.25;
                let row32: Vec<f32> = row.iter().map(|&x| x as f32).collect();
                each_kernel::<f64, false>(&row, &v, &dd, h);
                each_kernel::<f64, true>(&row, &v, &dd, h);
                each_kernel::<f32, false>(&row32, &v, &dd, h);
                each_kernel::<f32, true>(&row32, &v, &dd, h);
            }
        }
    }
}

/// The tie flag of the shortest-path kernels (portable) against a plain loop.
#[test]
fn tie_flags_are_exact() {
    use super::kernels;
    for m in (1..=20).chain([33, 64, 67]) {
        for levels in [Some(1), Some(2), Some(5), None] {
            let row = pseudo_random(1, m, m as u64 * 7 + 1, levels);
            let v = vec![0.0; m];
            let mut dd = vec![0.0; m];
            let (b, j, tied) = kernels::dijkstra_init::<f64, false>(&row, &v, &mut dd);
            let low = row.iter().copied().fold(f64::INFINITY, f64::min);
            assert_eq!(b, low);
            assert_eq!(j, row.iter().position(|&x| x == low).unwrap());
            assert_eq!(tied, row.iter().filter(|&&x| x == low).count() > 1, "m {m}");
            // Scan with every third column scanned (-inf): only unscanned ones count.
            let mut dd: Vec<f64> = (0..m)
                .map(|k| if k % 3 == 2 { f64::NEG_INFINITY } else { 10.0 })
                .collect();
            let (b, _, tied) = kernels::dijkstra_scan::<f64, false>(&row, &v, &mut dd, 0.0);
            let open: Vec<f64> = (0..m).filter(|k| k % 3 != 2).map(|k| row[k]).collect();
            let low = open.iter().copied().fold(f64::INFINITY, f64::min);
            assert_eq!(b, low);
            if low.is_finite() {
                assert_eq!(tied, open.iter().filter(|&&x| x == low).count() > 1);
            }
        }
    }
}

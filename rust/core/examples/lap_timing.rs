//! Times the solver on pseudo-random matrices, median of `reps` runs:
//! `cargo run --release --example lap_timing -- 4096 [kind] [reps]`.
//!
//! Kinds: `uniform` (default), `rank8`, `levels:K` (integers in `0..K`: `levels:1` is a constant
//! matrix, `levels:2` random 0/1), and `warm` (uniform, re-solved warm after 1% noise).
use rebasin_core::lap::{solve, WarmStart};
use std::time::Instant;

fn main() {
    let arg = |k: usize| std::env::args().nth(k);
    let n: usize = arg(1).map_or(4096, |s| s.parse().expect("n"));
    let kind = arg(2).unwrap_or_else(|| "uniform".to_string());
    let reps: usize = arg(3).map_or(3, |s| s.parse().expect("reps"));
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let c: Vec<f64> = if kind == "rank8" {
        let a: Vec<f64> = (0..n * 8).map(|_| rnd()).collect();
        let b: Vec<f64> = (0..n * 8).map(|_| rnd()).collect();
        (0..n * n)
            .map(|k| {
                (0..8)
                    .map(|r| a[(k / n) * 8 + r] * b[(k % n) * 8 + r])
                    .sum()
            })
            .collect()
    } else if let Some(l) = kind.strip_prefix("levels:") {
        let l: f64 = l.parse().expect("levels:K");
        (0..n * n).map(|_| (rnd() * l).floor()).collect()
    } else {
        (0..n * n).map(|_| rnd()).collect()
    };
    let mut times = Vec::new();
    let mut objective = 0.0;
    if kind == "warm" {
        let first = solve(&c, n, n, false, None).unwrap();
        let c2: Vec<f64> = c.iter().map(|x| x + 0.01 * (rnd() - 0.5)).collect();
        let r2c: Vec<i64> = first.col_ind.iter().map(|&j| j as i64).collect();
        for _ in 0..reps {
            let w = WarmStart {
                row_to_col: &r2c,
                u: &first.u,
                v: &first.v,
            };
            let t = Instant::now();
            objective = solve(&c2, n, n, false, Some(w)).unwrap().objective;
            times.push(t.elapsed().as_secs_f64());
        }
    } else {
        for _ in 0..reps {
            let t = Instant::now();
            objective = solve(&c, n, n, false, None).unwrap().objective;
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "n={n} {kind}: median {:.4}s of {reps} (min {:.4}s) objective {objective}",
        times[reps / 2],
        times[0]
    );
}

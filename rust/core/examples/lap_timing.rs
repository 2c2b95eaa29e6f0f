//! Times the solver on a pseudo-random uniform matrix: `cargo run --release --example lap_timing -- 4096`.
use rebasin_core::lap::solve;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(4096, |s| s.parse().expect("n"));
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let kind = std::env::args().nth(2).unwrap_or_default();
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
    } else {
        (0..n * n).map(|_| rnd()).collect()
    };
    for _ in 0..3 {
        let t = Instant::now();
        let sol = solve(&c, n, n, false, None).unwrap();
        println!(
            "n={n} {:.4}s objective {}",
            t.elapsed().as_secs_f64(),
            sol.objective
        );
    }
}

//! Rayon thread pools, one per thread count, built on first use and kept: building a pool starts
//! its threads, which cost more than a small matching (the straight-through estimator calls weight
//! matching at every step). Only the few most recently used pools are kept, so that a caller who
//! tries many thread counts does not keep all their threads alive.

use crate::error::PoolError;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex, OnceLock};

/// The largest thread count accepted. The work is compute-bound, so threads beyond the cores
/// only add overhead, and a pool of this size already takes seconds to start on a small machine
/// (measured on 2 cores: 256 threads 0.03 s, 1024 threads 2 s, 5000 threads 48 s; `2**40` started
/// about 30,000 threads and never finished). Larger counts are refused, not clamped, so that a
/// typo is seen.
pub const MAX_THREADS: usize = 1024;

/// Pools kept at once (the most recently used).
const KEPT: usize = 4;

/// The kept pools with their thread counts, most recently used first.
type Kept = Mutex<Vec<(usize, Arc<ThreadPool>)>>;

/// `n_threads` must be `1..=MAX_THREADS`.
///
/// # Errors
/// [`PoolError::Zero`] or [`PoolError::TooMany`].
pub fn check(n_threads: usize) -> Result<(), PoolError> {
    match n_threads {
        0 => Err(PoolError::Zero),
        n if n > MAX_THREADS => Err(PoolError::TooMany {
            n,
            max: MAX_THREADS,
        }),
        _ => Ok(()),
    }
}

/// The pool of `n_threads` threads (built the first time it is asked for, then the same one while
/// it is among the [`KEPT`] most recently used).
///
/// # Errors
/// As [`check`], or [`PoolError::Build`] when rayon cannot start the threads.
pub fn pool(n_threads: usize) -> Result<Arc<ThreadPool>, PoolError> {
    static POOLS: OnceLock<Kept> = OnceLock::new();
    check(n_threads)?;
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        // A panic while the lock was held cannot leave the list half-written (one insert or
        // one rotation at a time).
        .unwrap_or_else(|e| e.into_inner());
    if let Some(k) = pools.iter().position(|(n, _)| *n == n_threads) {
        pools[..=k].rotate_right(1);
        return Ok(Arc::clone(&pools[0].1));
    }
    let p = ThreadPoolBuilder::new()
        .num_threads(n_threads)
        .build()
        .map_err(|e| PoolError::Build {
            n: n_threads,
            reason: e.to_string(),
        })?;
    let p = Arc::new(p);
    pools.insert(0, (n_threads, Arc::clone(&p)));
    // A pool dropped here ends its threads once no caller holds it any more.
    pools.truncate(KEPT);
    Ok(p)
}

/// Runs `f` on the kept pool of `n_threads` threads, or on the current pool (the global one,
/// sized by `RAYON_NUM_THREADS`) when `None`. Call it without the GIL: building a pool starts
/// its threads.
///
/// # Errors
/// As [`pool`].
///
/// # Example
/// ```
/// let n = rebasin_core::pool::install(Some(2), rayon::current_num_threads).unwrap();
/// assert_eq!(n, 2);
/// ```
pub fn install<R: Send>(
    n_threads: Option<usize>,
    f: impl FnOnce() -> R + Send,
) -> Result<R, PoolError> {
    match n_threads {
        Some(n) => Ok(pool(n)?.install(f)),
        None => Ok(f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn one_pool_per_thread_count() {
        let a = pool(3).unwrap();
        let b = pool(3).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 3);
        let c = pool(2).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(install(Some(2), rayon::current_num_threads).unwrap(), 2);
        assert_eq!(
            install(None, rayon::current_num_threads).unwrap(),
            rayon::current_num_threads()
        );
        // Only the most recent pools are kept (in this test: tests run in parallel and share
        // the list, and the one above needs pool 3 kept between its two calls).
        let first = pool(5).unwrap();
        for n in 6..6 + KEPT {
            pool(n).unwrap();
        }
        assert!(!Arc::ptr_eq(&first, &pool(5).unwrap()));
        // A pool in use stays usable after it is pushed out.
        assert_eq!(first.install(rayon::current_num_threads), 5);
    }

    #[test]
    fn thread_counts_out_of_range_are_refused_at_once() {
        // Issue 12: 2**40 started ~30,000 threads and never finished.
        let t = Instant::now();
        for n in [0, MAX_THREADS + 1, 5000, 1 << 40, usize::MAX] {
            let e = install(Some(n), || ()).unwrap_err();
            assert!(e.to_string().contains("n_threads"), "{e}");
        }
        assert_eq!(
            check(1 << 40),
            Err(PoolError::TooMany {
                n: 1 << 40,
                max: MAX_THREADS
            })
        );
        assert!(t.elapsed().as_secs_f64() < 1.0);
        assert!(check(1).is_ok() && check(MAX_THREADS).is_ok());
    }
}

//! Rayon thread pools, one per thread count, built on first use and kept for the life of the
//! process: building a pool starts its threads, which cost more than a small matching (the
//! straight-through estimator calls weight matching at every step).

use rayon::{ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The pool of `n_threads` threads (built the first time it is asked for, then the same one).
/// `0` means rayon's default size (`RAYON_NUM_THREADS`, else one thread per core).
///
/// # Errors
/// When rayon cannot start the threads.
pub fn pool(n_threads: usize) -> Result<Arc<ThreadPool>, ThreadPoolBuildError> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        // A panic while the lock was held cannot leave the map half-written (one insert).
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n_threads) {
        return Ok(Arc::clone(p));
    }
    let p = Arc::new(ThreadPoolBuilder::new().num_threads(n_threads).build()?);
    pools.insert(n_threads, Arc::clone(&p));
    Ok(p)
}

/// Runs `f` on the kept pool of `n_threads` threads, or on the current pool (the global one,
/// sized by `RAYON_NUM_THREADS`) when `None`.
///
/// # Errors
/// When rayon cannot start the threads.
///
/// # Example
/// ```
/// let n = rebasin_core::pool::install(Some(2), rayon::current_num_threads).unwrap();
/// assert_eq!(n, 2);
/// ```
pub fn install<R: Send>(
    n_threads: Option<usize>,
    f: impl FnOnce() -> R + Send,
) -> Result<R, ThreadPoolBuildError> {
    match n_threads {
        Some(n) => Ok(pool(n)?.install(f)),
        None => Ok(f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}

//! Runtime selection of the widest vector instructions the CPU has. The same generic code is
//! compiled once per instruction set; the wheel stays portable.

use super::solver::{Solved, Solver};
use super::{CostValue, InternalWarm, LapError};

type Out = Result<Solved, LapError>;

pub(super) fn solve<T: CostValue>(
    c: &[T],
    n: usize,
    m: usize,
    maximize: bool,
    warm: Option<InternalWarm>,
) -> Out {
    if maximize {
        solve_sign::<T, true>(c, n, m, warm)
    } else {
        solve_sign::<T, false>(c, n, m, warm)
    }
}

fn solve_sign<T: CostValue, const MAX: bool>(
    c: &[T],
    n: usize,
    m: usize,
    warm: Option<InternalWarm>,
) -> Out {
    #[cfg(target_arch = "x86_64")]
    {
        if !portable_forced() && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { solve_avx2::<T, MAX>(c, n, m, warm) };
        }
    }
    Solver::<T, MAX, false>::new(c, n, m).run(warm)
}

/// Whether a test asked for the portable kernels on this thread (see `FORCE_PORTABLE`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn portable_forced() -> bool {
    #[cfg(test)]
    return FORCE_PORTABLE.with(|f| f.get());
    #[cfg(not(test))]
    false
}

#[cfg(test)]
thread_local! {
    /// Set by tests to run whole solves on the portable kernels on a CPU with AVX2, so that
    /// the two can be compared (otherwise the portable path never runs there).
    pub(super) static FORCE_PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The solver compiled for AVX2 (its kernels inlined into this function take the intrinsic
/// paths).
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn solve_avx2<T: CostValue, const MAX: bool>(
    c: &[T],
    n: usize,
    m: usize,
    warm: Option<InternalWarm>,
) -> Out {
    Solver::<T, MAX, true>::new(c, n, m).run(warm)
}

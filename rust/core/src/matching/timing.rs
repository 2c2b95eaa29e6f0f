//! Where the time of a weight matching went, measured with `std::time::Instant` around each piece
//! of work (a few dozen clock reads per group and sweep, nothing next to the work they time).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Seconds spent in each part of [`super::weight_matching`].
///
/// `gemm`, `gather` and `lap` add up the time of every cost product, gather and assignment, in
/// the forward pass and the sweeps alike; `forward` is the wall time of the forward pass
/// ([`super::Options::forward`]) with its own products and assignments; `total` is the wall time
/// of the whole call, checks included.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Cost products (threaded GEMM).
    pub gemm: f64,
    /// Gathers of permuted tensors into matrices, and the updates' differences of them.
    pub gather: f64,
    /// Linear assignments.
    pub lap: f64,
    /// The forward pass (zero without one).
    pub forward: f64,
    /// The whole call.
    pub total: f64,
}

/// A running total of seconds, added to through a shared reference.
#[derive(Default)]
pub(super) struct Stopwatch(Cell<f64>);

impl Stopwatch {
    /// Runs `f`, adding its wall time.
    #[inline]
    pub(super) fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.add(t.elapsed());
        r
    }

    pub(super) fn add(&self, d: Duration) {
        self.0.set(self.0.get() + d.as_secs_f64());
    }

    pub(super) fn seconds(&self) -> f64 {
        self.0.get()
    }
}

/// The stopwatches of the engine's kernels.
#[derive(Default)]
pub(super) struct Clock {
    pub(super) gemm: Stopwatch,
    pub(super) gather: Stopwatch,
    pub(super) lap: Stopwatch,
}

impl Clock {
    /// The totals, with the forward pass's and the whole call's wall times.
    pub(super) fn timings(&self, forward: Duration, total: Duration) -> Timings {
        Timings {
            gemm: self.gemm.seconds(),
            gather: self.gather.seconds(),
            lap: self.lap.seconds(),
            forward: forward.as_secs_f64(),
            total: total.as_secs_f64(),
        }
    }
}

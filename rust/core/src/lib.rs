//! Pure-Rust engine of rebasin-rs.
//!
//! - [`lap`]: Jonker-Volgenant linear assignment, dense, exact, warm-startable.
//! - [`matching`]: weight matching (Git Re-Basin) with threaded, incrementally updated costs.
//! - [`pool`]: rayon thread pools, one per thread count (at most `pool::MAX_THREADS`), kept.
//! - [`error`]: every error of the above.
//!
//! No Python here: the `rebasin-python` crate converts, validates and releases the GIL.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod lap;
pub mod matching;
pub mod pool;

pub use error::{LapError, MatchError, PoolError};

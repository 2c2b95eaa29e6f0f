//! Pure-Rust engine of rebasin-rs.
//!
//! - [`lap`]: Jonker-Volgenant linear assignment, dense, exact, warm-startable.
//! - [`matching`]: weight matching (Git Re-Basin) with threaded, incrementally updated costs.
//!
//! No Python here: the `rebasin-python` crate converts, validates and releases the GIL.

pub mod error;
pub mod lap;
pub mod matching;

pub use error::LapError;

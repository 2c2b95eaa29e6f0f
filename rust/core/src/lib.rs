//! Pure-Rust engine of rebasin-rs.
//!
//! - [`lap`]: Jonker-Volgenant linear assignment, dense, exact, warm-startable.
//!
//! No Python here: the `rebasin-python` crate converts, validates and releases the GIL.

pub mod error;
pub mod lap;

pub use error::LapError;

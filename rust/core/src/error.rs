//! Errors of the core engine.

use thiserror::Error;

/// Every way the core can refuse its input.
///
/// The Python binding maps each variant to `ValueError` with a message that names the argument;
/// the messages here are written to be shown to users as they are.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LapError {
    /// The flat buffer does not hold `rows * cols` entries.
    #[error("cost buffer holds {len} entries but the shape {rows}x{cols} needs {expected}")]
    ShapeMismatch {
        /// Length of the buffer given.
        len: usize,
        /// Number of rows claimed.
        rows: usize,
        /// Number of columns claimed.
        cols: usize,
        /// `rows * cols`.
        expected: usize,
    },
    /// A NaN, or an infinity of the sign that cannot mean "forbidden".
    #[error(
        "cost matrix contains invalid numeric entries at ({row}, {col}): {value}; \
         NaN is never allowed, and only {allowed} marks a forbidden pair"
    )]
    InvalidEntry {
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
        /// The entry itself.
        value: f64,
        /// `"+inf"` when minimising, `"-inf"` when maximising.
        allowed: &'static str,
    },
    /// No assignment of the smaller side avoids every forbidden entry.
    #[error(
        "cost matrix is infeasible: no complete assignment avoids the forbidden (infinite) entries"
    )]
    Infeasible,
    /// The warm start does not fit the problem.
    #[error("warm_start: {0}")]
    BadWarmStart(String),
}

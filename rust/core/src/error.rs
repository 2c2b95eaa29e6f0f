//! Errors of the core engine: one enum per entry point family, one documented variant per failure.
//!
//! The messages are written to be shown to users as they are: they name the user's own groups and
//! parameters (as given in [`crate::matching::Group::name`] and [`crate::matching::Tensor::name`])
//! and, where there is one, say how to fix the input. The Python binding maps each variant once to
//! `rebasin_rs.RebasinError` with the group, parameter and axis as attributes.

use thiserror::Error;

/// Every way the assignment solver can refuse its input.
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

/// Every way a thread count can be refused ([`crate::pool`]).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PoolError {
    /// Zero threads.
    #[error("n_threads must be at least 1, or None for the default (all cores)")]
    Zero,
    /// More threads than [`crate::pool::MAX_THREADS`].
    #[error(
        "n_threads is {n}, above the maximum of {max}; the work is compute-bound, so pass at most \
         the number of cores, or None for the default (all cores)"
    )]
    TooMany {
        /// The count asked for.
        n: usize,
        /// The maximum.
        max: usize,
    },
    /// The operating system refused to start the threads.
    #[error("n_threads: could not start {n} threads: {reason}")]
    Build {
        /// The count asked for.
        n: usize,
        /// What rayon reported.
        reason: String,
    },
}

/// Every way weight matching can refuse its input or fail.
///
/// `group` and `param` fields hold the names given by the caller (`#k` for an unnamed one), `axis`
/// fields the axis as the engine was given it.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MatchError {
    /// Models A and B do not list the same number of parameters.
    #[error("model A has {a} parameters but model B has {b}")]
    ParamCount {
        /// Count in A.
        a: usize,
        /// Count in B.
        b: usize,
    },
    /// A parameter has one shape in model A and another in model B.
    #[error(
        "parameter '{param}': shape {shape_a:?} in model A but {shape_b:?} in model B; the two \
         models must have the same architecture"
    )]
    ShapeMismatch {
        /// Parameter name.
        param: String,
        /// Its shape in A.
        shape_a: Vec<usize>,
        /// Its shape in B.
        shape_b: Vec<usize>,
    },
    /// A parameter's data does not hold as many elements as its shape says.
    #[error(
        "parameter '{param}': shape {shape:?} needs {expected} elements, got {len_a} in model A \
         and {len_b} in model B"
    )]
    DataLength {
        /// Parameter name.
        param: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The product of the shape.
        expected: usize,
        /// Elements given for A.
        len_a: usize,
        /// Elements given for B.
        len_b: usize,
    },
    /// A group has fewer than two units: there is nothing to permute.
    #[error("group '{group}': has {size} unit(s); a permutation needs at least 2")]
    TooFewUnits {
        /// Group name.
        group: String,
        /// Its size.
        size: usize,
    },
    /// A group lists no `(parameter, axis)` member.
    #[error("group '{group}': has no member; remove it or give it members")]
    NoMember {
        /// Group name.
        group: String,
    },
    /// A group names a parameter index past the end of the parameter list.
    #[error("group '{group}': names parameter {index}, but there are {count}")]
    NoSuchParam {
        /// Group name.
        group: String,
        /// The index given.
        index: usize,
        /// Number of parameters.
        count: usize,
    },
    /// A group permutes an axis that the parameter does not have.
    #[error("group '{group}': permutes axis {axis} of parameter '{param}', of shape {shape:?}")]
    AxisOutOfRange {
        /// Group name.
        group: String,
        /// Parameter name.
        param: String,
        /// The axis given.
        axis: usize,
        /// The parameter's shape.
        shape: Vec<usize>,
    },
    /// A group's size differs from the size of one of its axes.
    #[error(
        "group '{group}': has {size} units but axis {axis} of parameter '{param}' has size \
         {axis_size}; every axis of a group must have one size"
    )]
    AxisSize {
        /// Group name.
        group: String,
        /// Parameter name.
        param: String,
        /// The axis.
        axis: usize,
        /// The group's size.
        size: usize,
        /// The axis's size.
        axis_size: usize,
    },
    /// Two groups (or one group twice) claim the same axis.
    #[error(
        "group '{group}': axis {axis} of parameter '{param}' is also in group '{other}'; an axis \
         can be permuted by one permutation only"
    )]
    AxisTwice {
        /// Group name.
        group: String,
        /// Parameter name.
        param: String,
        /// The axis.
        axis: usize,
        /// The group that claimed it first.
        other: String,
    },
    /// The initial permutations are not one per group.
    #[error("init: {given} permutations given for {groups} groups; give one for every group")]
    InitCount {
        /// Permutations given.
        given: usize,
        /// Groups.
        groups: usize,
    },
    /// An initial permutation is not a permutation of the group's size.
    #[error("init for group '{group}': not a permutation of 0..{size}")]
    BadInit {
        /// Group name.
        group: String,
        /// The group's size.
        size: usize,
    },
    /// [`crate::matching::group_cost`] was asked for a group index past the end.
    #[error("no group {index}: there are {count} groups")]
    NoSuchGroup {
        /// The index given.
        index: usize,
        /// Number of groups.
        count: usize,
    },
    /// A weight is NaN or infinite (found by the check of every weight before matching).
    #[error(
        "group '{group}': parameter '{param}' of model {model} is not finite; check the weights \
         for NaN or inf"
    )]
    NonFinite {
        /// The first group that permutes the parameter.
        group: String,
        /// Parameter name.
        param: String,
        /// `'A'` or `'B'`.
        model: char,
    },
    /// The backend that computes the cost products ([`crate::matching::Products`]) failed (a
    /// device out of memory, an exception in the caller's code).
    #[error("the cost products failed: {reason}")]
    Products {
        /// What the backend said.
        reason: String,
    },
    /// The linear assignment of a group failed (for instance a warm start that does not fit, or a
    /// cost that overflowed float32).
    #[error("group '{group}': its assignment failed: {source}")]
    Assignment {
        /// Group name.
        group: String,
        /// What the solver refused.
        #[source]
        source: LapError,
    },
}

//! Who computes the cost products: the engine's own kernels on CPU threads, or a backend that
//! holds the weights elsewhere (a GPU, through torch in the binding) and computes them there.
//!
//! The coordinate descent, its kept costs, their incremental updates, the warm-started
//! assignments and the stopping rule stay in the engine whichever computes the products: a
//! backend only answers "add these products to this `n x n` cost", "this objective" and "are
//! these weights finite". Each answer is one `n x n` float32 matrix per cost or update, so only
//! costs cross from the device to the CPU, never weights.

use super::gather::Index;
use crate::error::MatchError;

/// One product of a cost: `A_p^(axis)[a] (B_p^(axis)[b] - B_p^(axis)[b_old])^T`, an `n x n`
/// matrix (`n` the size of `axis`), where `M^(axis)[idx]` is parameter `p` viewed under `shape`,
/// each axis `k` read at positions `idx[k]`, moved so that `axis` comes first and flattened to
/// `(n, -1)` (the other axes in order). Without `b_old` the product is `A (B[b])^T`.
#[derive(Clone)]
pub struct Product<'s> {
    /// The parameter (its index in the engine's parameter list).
    pub param: usize,
    /// The view to read it under: its own shape, or (the forward pass's nested solve) with two
    /// neighbouring axes merged into one.
    pub shape: &'s [usize],
    /// The axis whose positions are the rows and columns of the product.
    pub axis: usize,
    /// Where A is read on each axis of `shape`.
    pub a: Vec<Index<'s>>,
    /// Where B is read on each axis of `shape`.
    pub b: Vec<Index<'s>>,
    /// An incremental update: B read here is subtracted from B read at `b`.
    pub b_old: Option<Vec<Index<'s>>>,
}

/// A backend that computes the engine's products where the weights live.
///
/// Implementations return [`MatchError::Products`] when they fail; the engine stops at once and
/// returns it.
pub trait Products: Send {
    /// Adds the sum of the products `requests` to the row-major `n x n` float32 cost `c`.
    ///
    /// # Errors
    /// [`MatchError::Products`] when the backend fails.
    fn add_products(
        &mut self,
        n: usize,
        requests: &[Product<'_>],
        c: &mut [f32],
    ) -> Result<(), MatchError>;

    /// `sum over (p, b) of <A_p, B_p read at b>` in float64, A in its own layout and B read in
    /// the same layout (each axis `k` at positions `b[k]`).
    ///
    /// # Errors
    /// [`MatchError::Products`] when the backend fails.
    fn objective(&mut self, parts: &[(usize, Vec<Index<'_>>)]) -> Result<f64, MatchError>;

    /// The first of `params` (in order, model A before B) holding a NaN or an infinite value, as
    /// `(parameter, 'A' or 'B')`, or `None` when all are finite.
    ///
    /// # Errors
    /// [`MatchError::Products`] when the backend fails.
    fn first_non_finite(&mut self, params: &[usize]) -> Result<Option<(usize, char)>, MatchError>;
}

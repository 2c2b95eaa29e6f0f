//! Weight matching (Git Re-Basin, Algorithm 1): coordinate descent over permutation groups, each
//! step a linear assignment problem on the cost `C_g = sum_k A_k (B_k, other axes permuted)^T`.
//!
//! Unlike the official loop, which recomputes every cost matrix from scratch and cold-solves it,
//! this engine keeps every group's cost matrix and updates it when a neighbouring permutation
//! changes: if `pi_h` moves the units `S`, each cost that reads an axis permuted by `pi_h` changes
//! by a product whose inner dimension is `|S|` times the rest of that tensor, instead of all of it.
//! After the first sweep few units move, so the updates are small. Every LAP is warm-started from
//! the group's previous solution. The result is the same as recomputing (up to float32 rounding).
//!
//! Tensors are row-major, PyTorch layout, float32 or half precision (float16, bfloat16: read in
//! their own dtype and widened block by block in the gathers, never copied whole); a permutation
//! `perm` of a group says that slot `i` of model A is matched with unit `perm[i]` of model B (the
//! official convention).
//!
//! The rooms: `check` (the input types and their checks), `gather` (gathers, operands, the GEMM),
//! `engine` (the kept costs, their updates, the timed assignments), `products` (the backend that
//! computes the products where the weights live, a GPU say, instead of the engine's kernels),
//! `forward` (the forward pass and its nested head solve), `driver` (options, result, visiting
//! order, the sweeps) and `timing`.

mod check;
mod driver;
mod engine;
mod forward;
mod gather;
mod products;
mod timing;

pub use crate::error::MatchError;
pub use check::{bf16, f16, Data, Group, Tensor};
pub use driver::{visit_orders, weight_matching, weight_matching_on, MatchResult, Options};
pub use engine::group_cost;
pub use gather::Index;
pub use products::{Product, Products};
pub use timing::Timings;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_products;

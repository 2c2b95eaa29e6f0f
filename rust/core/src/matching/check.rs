//! The inputs of weight matching (tensors, groups) and their checks.

use crate::error::MatchError;
pub use half::{bf16, f16};
use rayon::prelude::*;

/// A tensor's elements, row-major, in the dtype they are stored in: the engine converts them to
/// float32 block by block inside its gathers, so a half-precision model is never copied whole.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Data<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::F16(d) => d.len(),
            Data::Bf16(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [f32]> for Data<'a> {
    fn from(d: &'a [f32]) -> Self {
        Data::F32(d)
    }
}

impl<'a> From<&'a Vec<f32>> for Data<'a> {
    fn from(d: &'a Vec<f32>) -> Self {
        Data::F32(d)
    }
}

/// An element type the engine reads: float32, or a half-precision format widened exactly.
pub(super) trait Elem: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// Runs `$body` with `$d` bound to the slice of `$data`, whatever its element type.
macro_rules! with_data {
    ($data:expr, $d:ident => $body:expr) => {
        match $data {
            $crate::matching::check::Data::F32($d) => $body,
            $crate::matching::check::Data::F16($d) => $body,
            $crate::matching::check::Data::Bf16($d) => $body,
        }
    };
}
pub(super) use with_data;

/// A tensor, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    /// The parameter's name, used in error messages (`#k` when empty).
    pub name: &'a str,
    /// Elements, row-major, float32 or half precision.
    pub data: Data<'a>,
    /// Dimensions.
    pub shape: &'a [usize],
}

/// One permutation group: its name, its size and the `(parameter index, axis)` it permutes.
#[derive(Debug, Clone)]
pub struct Group {
    /// The permutation's name, used in error messages (`#k` when empty).
    pub name: String,
    /// Number of units.
    pub size: usize,
    /// Members.
    pub members: Vec<(usize, usize)>,
}

/// `name`, or `#index` when it is empty, for messages.
fn label(name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("#{index}")
    } else {
        name.to_string()
    }
}

/// The name of group `g` for messages.
pub(super) fn group_name(groups: &[Group], g: usize) -> String {
    label(&groups[g].name, g)
}

/// Which axis of which parameter each group permutes, checked.
pub(super) struct Layout<'a> {
    pub(super) a: &'a [Tensor<'a>],
    pub(super) b: &'a [Tensor<'a>],
    pub(super) groups: &'a [Group],
    /// `axis_group[p][k]`: the group permuting axis `k` of parameter `p`.
    pub(super) axis_group: Vec<Vec<Option<usize>>>,
}

impl Layout<'_> {
    /// The name of group `g` for messages.
    pub(super) fn group_name(&self, g: usize) -> String {
        group_name(self.groups, g)
    }

    /// The error for parameter `p` of `model` (`'A'` or `'B'`) holding a NaN or an infinity,
    /// against the first group that permutes it.
    pub(super) fn non_finite(&self, p: usize, model: char) -> MatchError {
        let g = self.axis_group[p]
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(0);
        MatchError::NonFinite {
            group: self.group_name(g),
            param: label(self.a[p].name, p),
            model,
        }
    }
}

/// Checks that the parameters of A and B agree, that every group fits them and that `init` holds
/// one permutation per group.
pub(super) fn check<'a>(
    groups: &'a [Group],
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    init: Option<&Vec<Vec<usize>>>,
) -> Result<Layout<'a>, MatchError> {
    check_params(a, b)?;
    check_shapes(groups, a, b, init)
}

/// [`check`] without the data: for tensors that a product backend holds (their data is empty).
pub(super) fn check_shapes<'a>(
    groups: &'a [Group],
    a: &'a [Tensor<'a>],
    b: &'a [Tensor<'a>],
    init: Option<&Vec<Vec<usize>>>,
) -> Result<Layout<'a>, MatchError> {
    check_param_shapes(a, b)?;
    let axis_group = check_groups(groups, a)?;
    if let Some(init) = init {
        check_init(groups, init)?;
    }
    Ok(Layout {
        a,
        b,
        groups,
        axis_group,
    })
}

fn check_param_shapes(a: &[Tensor<'_>], b: &[Tensor<'_>]) -> Result<(), MatchError> {
    if a.len() != b.len() {
        return Err(MatchError::ParamCount {
            a: a.len(),
            b: b.len(),
        });
    }
    for (p, (ta, tb)) in a.iter().zip(b).enumerate() {
        if ta.shape != tb.shape {
            return Err(MatchError::ShapeMismatch {
                param: label(ta.name, p),
                shape_a: ta.shape.to_vec(),
                shape_b: tb.shape.to_vec(),
            });
        }
    }
    Ok(())
}

fn check_params(a: &[Tensor<'_>], b: &[Tensor<'_>]) -> Result<(), MatchError> {
    check_param_shapes(a, b)?;
    for (p, (ta, tb)) in a.iter().zip(b).enumerate() {
        let numel: usize = ta.shape.iter().product();
        if ta.data.len() != numel || tb.data.len() != numel {
            return Err(MatchError::DataLength {
                param: label(ta.name, p),
                shape: ta.shape.to_vec(),
                expected: numel,
                len_a: ta.data.len(),
                len_b: tb.data.len(),
            });
        }
    }
    Ok(())
}

/// Returns which group permutes each axis of each parameter.
fn check_groups(groups: &[Group], a: &[Tensor<'_>]) -> Result<Vec<Vec<Option<usize>>>, MatchError> {
    let mut axis_group: Vec<Vec<Option<usize>>> =
        a.iter().map(|t| vec![None; t.shape.len()]).collect();
    for (g, group) in groups.iter().enumerate() {
        let name = || group_name(groups, g);
        if group.size < 2 {
            return Err(MatchError::TooFewUnits {
                group: name(),
                size: group.size,
            });
        }
        if group.members.is_empty() {
            return Err(MatchError::NoMember { group: name() });
        }
        for &(p, k) in &group.members {
            let Some(t) = a.get(p) else {
                return Err(MatchError::NoSuchParam {
                    group: name(),
                    index: p,
                    count: a.len(),
                });
            };
            let param = || label(t.name, p);
            if k >= t.shape.len() {
                return Err(MatchError::AxisOutOfRange {
                    group: name(),
                    param: param(),
                    axis: k,
                    shape: t.shape.to_vec(),
                });
            }
            if t.shape[k] != group.size {
                return Err(MatchError::AxisSize {
                    group: name(),
                    param: param(),
                    axis: k,
                    size: group.size,
                    axis_size: t.shape[k],
                });
            }
            if let Some(other) = axis_group[p][k] {
                return Err(MatchError::AxisTwice {
                    group: name(),
                    param: param(),
                    axis: k,
                    other: group_name(groups, other),
                });
            }
            axis_group[p][k] = Some(g);
        }
    }
    Ok(axis_group)
}

fn check_init(groups: &[Group], init: &[Vec<usize>]) -> Result<(), MatchError> {
    if init.len() != groups.len() {
        return Err(MatchError::InitCount {
            given: init.len(),
            groups: groups.len(),
        });
    }
    for (g, (p, group)) in init.iter().zip(groups).enumerate() {
        let mut seen = vec![false; group.size];
        let ok = p.len() == group.size
            && p.iter()
                .all(|&x| x < group.size && !std::mem::replace(&mut seen[x], true));
        if !ok {
            return Err(MatchError::BadInit {
                group: group_name(groups, g),
                size: group.size,
            });
        }
    }
    Ok(())
}

/// Every weight that some group permutes is finite, in both models. One pass over the weights
/// (the matching reads them many times); without it a NaN weight surfaces as a NaN cost, far from
/// its cause.
pub(super) fn check_finite(lay: &Layout<'_>) -> Result<(), MatchError> {
    for (p, groups) in lay.axis_group.iter().enumerate() {
        if groups.iter().all(Option::is_none) {
            continue;
        }
        for (model, t) in [('A', &lay.a[p]), ('B', &lay.b[p])] {
            if !with_data!(t.data, d => all_finite(d)) {
                return Err(lay.non_finite(p, model));
            }
        }
    }
    Ok(())
}

/// Whether every value is finite: an and-reduction over blocks (which vectorises), blocks in
/// parallel on large tensors.
fn all_finite<E: Elem>(x: &[E]) -> bool {
    const BLOCK: usize = 1 << 14;
    let block_ok = |c: &[E]| c.iter().fold(true, |ok, v| ok & v.f32().is_finite());
    if x.len() >= 4 * BLOCK {
        x.par_chunks(BLOCK).all(block_ok)
    } else {
        x.chunks(BLOCK).all(block_ok)
    }
}

//! The weight-matching bindings: parameters borrowed from numpy in their stored dtype, groups,
//! warm starts and timings converted, the engine run with the GIL released.

use crate::{match_error, plain_error, pool_error, to_i64};
use half::slice::HalfBitsSliceExt;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rebasin_core::lap;
use rebasin_core::matching::{self, Data, Group, Options, Tensor, Timings};
use rebasin_core::pool;

/// A parameter array borrowed from Python: float32, or half precision as its 16-bit patterns
/// (numpy has no bfloat16; the Python side views float16 and bfloat16 tensors as uint16).
enum Held<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, u16>),
    Bf16(PyReadonlyArrayDyn<'py, u16>),
}

/// Borrows each array of `arrs` as the dtype `dtypes` names for it (all float32 when None).
fn hold<'py>(
    arrs: &[Bound<'py, PyAny>],
    dtypes: Option<&[String]>,
    label: &str,
) -> PyResult<Vec<Held<'py>>> {
    if let Some(d) = dtypes {
        if d.len() != arrs.len() {
            return Err(plain_error(format!(
                "{label}: {} dtypes given for {} arrays; give one per array",
                d.len(),
                arrs.len()
            )));
        }
    }
    arrs.iter()
        .enumerate()
        .map(|(k, a)| {
            let dtype = dtypes.map_or("float32", |d| d[k].as_str());
            let wrong = |want: &str| {
                PyTypeError::new_err(format!(
                    "{label}[{k}] must be a numpy {want} array ({dtype})"
                ))
            };
            Ok(match dtype {
                "float32" => Held::F32(a.extract().map_err(|_| wrong("float32"))?),
                "float16" => Held::F16(a.extract().map_err(|_| wrong("uint16"))?),
                "bfloat16" => Held::Bf16(a.extract().map_err(|_| wrong("uint16"))?),
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "{label}[{k}]: dtype {other:?} is not one of float32, float16, bfloat16"
                    )))
                }
            })
        })
        .collect()
}

/// Shapes and C-order element slices of held arrays.
type Borrowed<'a> = (Vec<Vec<usize>>, Vec<Data<'a>>);

fn borrow<'a>(held: &'a [Held<'_>], label: &str) -> PyResult<Borrowed<'a>> {
    fn slice<'a, T: numpy::Element>(
        a: &'a PyReadonlyArrayDyn<'_, T>,
        label: &str,
        k: usize,
    ) -> PyResult<&'a [T]> {
        let s = a.is_c_contiguous().then(|| a.as_slice().ok()).flatten();
        s.ok_or_else(|| PyTypeError::new_err(format!("{label}[{k}] must be C-contiguous")))
    }
    let mut shapes = Vec::with_capacity(held.len());
    let mut data = Vec::with_capacity(held.len());
    for (k, h) in held.iter().enumerate() {
        let (shape, d) = match h {
            Held::F32(a) => (a.shape(), Data::F32(slice(a, label, k)?)),
            Held::F16(a) => (a.shape(), Data::F16(slice(a, label, k)?.reinterpret_cast())),
            Held::Bf16(a) => (
                a.shape(),
                Data::Bf16(slice(a, label, k)?.reinterpret_cast()),
            ),
        };
        shapes.push(shape.to_vec());
        data.push(d);
    }
    Ok((shapes, data))
}

fn tensors<'a>(
    names: &'a [String],
    shapes: &'a [Vec<usize>],
    data: &[Data<'a>],
) -> Vec<Tensor<'a>> {
    data.iter()
        .zip(shapes)
        .enumerate()
        .map(|(k, (d, s))| Tensor {
            name: names.get(k).map_or("", String::as_str),
            data: *d,
            shape: s,
        })
        .collect()
}

/// `(name, size, [(param index, axis), ...])` from Python.
pub(crate) type GroupIn = (String, usize, Vec<(usize, usize)>);

pub(crate) fn to_groups(groups: Vec<GroupIn>) -> Vec<Group> {
    groups
        .into_iter()
        .map(|(name, size, members)| Group {
            name,
            size,
            members,
        })
        .collect()
}

/// One name per parameter.
pub(crate) fn check_names(names: &[String], n_params: usize) -> PyResult<()> {
    if names.len() == n_params {
        return Ok(());
    }
    Err(plain_error(format!(
        "names: {} names given for {n_params} parameters; give one per parameter",
        names.len()
    )))
}

/// The timings as a dict, in the order the work happens.
pub(crate) fn timings_dict<'py>(py: Python<'py>, t: &Timings) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in [
        ("gemm", t.gemm),
        ("gather", t.gather),
        ("lap", t.lap),
        ("forward", t.forward),
        ("total", t.total),
    ] {
        d.set_item(k, v)?;
    }
    Ok(d)
}

pub(crate) fn perms_from(
    list: &[PyReadonlyArray1<'_, i64>],
    label: &str,
) -> PyResult<Vec<Vec<usize>>> {
    let mut out = Vec::with_capacity(list.len());
    for (g, p) in list.iter().enumerate() {
        let v = p
            .as_slice()
            .map_err(|_| PyTypeError::new_err(format!("{label}[{g}] must be contiguous")))?;
        if v.iter().any(|&x| x < 0) {
            return Err(plain_error(format!("{label}[{g}] has negative entries")));
        }
        out.push(v.iter().map(|&x| x as usize).collect());
    }
    Ok(out)
}

pub(crate) type WarmOut<'py> = Option<(
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
)>;

pub(crate) type MatchOut<'py> = (
    Vec<Bound<'py, PyArray1<i64>>>,
    f64,
    usize,
    Vec<f64>,
    Vec<Vec<usize>>,
    Vec<WarmOut<'py>>,
    Bound<'py, PyDict>,
);

pub(crate) type WarmIn<'py> = Option<(
    PyReadonlyArray1<'py, i64>,
    PyReadonlyArray1<'py, f64>,
    PyReadonlyArray1<'py, f64>,
)>;

/// Runs weight matching in Rust with the GIL released.
///
/// Low-level: `groups` is a list of `(name, size, [(param index, axis), ...])`; `names` holds
/// one name per parameter; `params_a` and `params_b` are C-contiguous float32 arrays in the same
/// order. Errors raise `rebasin_rs.RebasinError` naming the groups and parameters by these names.
/// The public wrapper `rebasin_rs.weight_matching` takes a `PermutationSpec` and mappings of names.
/// `n_threads` is `1..=MAX_THREADS` or None (the global pool); its pool is built without the GIL.
///
/// Returns `(perms, objective, sweeps, history, orders, warm, timings)`: `warm` holds each group's
/// last `(col_ind, u, v)` (for `warm=` of a later call), `timings` the seconds spent in `gemm`,
/// `gather`, `lap`, `forward` and `total`.
#[pyfunction]
#[pyo3(signature = (groups, names, params_a, params_b, max_iter, seed, init=None, n_threads=None, forward=false, warm=None, dtypes_a=None, dtypes_b=None, max_cost_bytes=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_matching<'py>(
    py: Python<'py>,
    groups: Vec<GroupIn>,
    names: Vec<String>,
    params_a: Vec<Bound<'py, PyAny>>,
    params_b: Vec<Bound<'py, PyAny>>,
    max_iter: usize,
    seed: u64,
    init: Option<Vec<PyReadonlyArray1<'py, i64>>>,
    n_threads: Option<usize>,
    forward: bool,
    warm: Option<Vec<WarmIn<'py>>>,
    dtypes_a: Option<Vec<String>>,
    dtypes_b: Option<Vec<String>>,
    max_cost_bytes: Option<usize>,
) -> PyResult<MatchOut<'py>> {
    let held_a = hold(&params_a, dtypes_a.as_deref(), "params_a")?;
    let held_b = hold(&params_b, dtypes_b.as_deref(), "params_b")?;
    let (shapes_a, data_a) = borrow(&held_a, "params_a")?;
    let (shapes_b, data_b) = borrow(&held_b, "params_b")?;
    check_names(&names, params_a.len())?;
    let (groups, opts) = options(
        groups,
        max_iter,
        seed,
        init,
        n_threads,
        forward,
        warm,
        max_cost_bytes,
    )?;
    let res = py.detach(|| {
        let ta = tensors(&names, &shapes_a, &data_a);
        let tb = tensors(&names, &shapes_b, &data_b);
        pool::install(n_threads, || {
            matching::weight_matching(&groups, &ta, &tb, &opts)
        })
    });
    let res = res.map_err(pool_error)?.map_err(match_error)?;
    match_out(py, res)
}

/// The groups and options of a matching, checked; `n_threads` is refused here, before anything
/// starts (its pool is built later, without the GIL).
#[allow(clippy::too_many_arguments)]
pub(crate) fn options(
    groups: Vec<GroupIn>,
    max_iter: usize,
    seed: u64,
    init: Option<Vec<PyReadonlyArray1<'_, i64>>>,
    n_threads: Option<usize>,
    forward: bool,
    warm: Option<Vec<WarmIn<'_>>>,
    max_cost_bytes: Option<usize>,
) -> PyResult<(Vec<Group>, Options)> {
    let warm = warm.map(warm_from);
    let init = init.map(|l| perms_from(&l, "init")).transpose()?;
    if let Some(n) = n_threads {
        pool::check(n).map_err(pool_error)?;
    }
    let opts = Options {
        max_iter,
        seed,
        init,
        forward,
        warm,
        max_cost_bytes,
    };
    Ok((to_groups(groups), opts))
}

/// A matching's result as Python values: `(perms, objective, sweeps, history, orders, warm,
/// timings)`.
pub(crate) fn match_out(py: Python<'_>, res: matching::MatchResult) -> PyResult<MatchOut<'_>> {
    let perms = res
        .perms
        .into_iter()
        .map(|p| PyArray1::from_vec(py, to_i64(p)))
        .collect();
    Ok((
        perms,
        res.objective,
        res.sweeps,
        res.history,
        res.orders,
        warm_to_py(py, res.warm),
        timings_dict(py, &res.timings)?,
    ))
}

/// Earlier assignments with their duals (from `weight_matching`'s last output). A malformed entry
/// is only a lost warm start, so it is dropped rather than refused.
pub(crate) fn warm_from(list: Vec<WarmIn<'_>>) -> Vec<Option<lap::LapSolution>> {
    list.into_iter()
        .map(|w| {
            let (c, u, v) = w?;
            let col_ind: Vec<usize> = c
                .as_slice()
                .ok()?
                .iter()
                .map(|&j| usize::try_from(j).ok())
                .collect::<Option<_>>()?;
            Some(lap::LapSolution {
                row_ind: (0..col_ind.len()).collect(),
                col_ind,
                objective: 0.0,
                u: u.as_slice().ok()?.to_vec(),
                v: v.as_slice().ok()?.to_vec(),
            })
        })
        .collect()
}

/// Each group's last `(col_ind, u, v)`, for `warm_from` of a later call.
pub(crate) fn warm_to_py(py: Python<'_>, warm: Vec<Option<lap::LapSolution>>) -> Vec<WarmOut<'_>> {
    warm.into_iter()
        .map(|w| {
            w.map(|s| {
                (
                    PyArray1::from_vec(py, to_i64(s.col_ind)),
                    PyArray1::from_vec(py, s.u),
                    PyArray1::from_vec(py, s.v),
                )
            })
        })
        .collect()
}

/// The cost matrix of group `g` under `perms`, flat `(n * n,)` float32, with the GIL released.
///
/// Low-level: arguments as for `weight_matching`; the public wrapper is `rebasin_rs.group_cost`.
#[pyfunction]
#[pyo3(signature = (groups, names, params_a, params_b, perms, g, dtypes_a=None, dtypes_b=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn group_cost<'py>(
    py: Python<'py>,
    groups: Vec<GroupIn>,
    names: Vec<String>,
    params_a: Vec<Bound<'py, PyAny>>,
    params_b: Vec<Bound<'py, PyAny>>,
    perms: Vec<PyReadonlyArray1<'py, i64>>,
    g: usize,
    dtypes_a: Option<Vec<String>>,
    dtypes_b: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let held_a = hold(&params_a, dtypes_a.as_deref(), "params_a")?;
    let held_b = hold(&params_b, dtypes_b.as_deref(), "params_b")?;
    let (shapes_a, data_a) = borrow(&held_a, "params_a")?;
    let (shapes_b, data_b) = borrow(&held_b, "params_b")?;
    check_names(&names, params_a.len())?;
    let perms = perms_from(&perms, "perms")?;
    let groups = to_groups(groups);
    let c = py
        .detach(|| {
            let ta = tensors(&names, &shapes_a, &data_a);
            let tb = tensors(&names, &shapes_b, &data_b);
            matching::group_cost(&groups, &ta, &tb, &perms, g)
        })
        .map_err(match_error)?;
    Ok(PyArray1::from_vec(py, c))
}

/// The visiting order of each sweep for `n_groups` groups and `seed` (for reference ports).
#[pyfunction]
pub(crate) fn visit_orders(n_groups: usize, seed: u64, sweeps: usize) -> Vec<Vec<usize>> {
    matching::visit_orders(n_groups, seed, sweeps)
}

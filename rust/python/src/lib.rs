//! PyO3 bindings of rebasin-rs: convert, validate, release the GIL, map errors. No algorithms here.

use half::slice::HalfBitsSliceExt;
use numpy::npyffi::{NPY_ARRAY_ALIGNED, NPY_ARRAY_DEFAULT, NPY_TYPES, PY_ARRAY_API};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rebasin_core::lap::{self, CostValue, WarmStart};
use rebasin_core::matching::{self, Data, Group, Options, Tensor, Timings};
use rebasin_core::{pool, LapError, MatchError, PoolError};
use std::os::raw::c_int;

// The one Python exception family (a ValueError), defined in Python so that users can import,
// catch and subclass it like any class of theirs.
pyo3::import_exception!(rebasin_rs._errors, RebasinError);

/// `RebasinError(message, group, param, axis)`.
fn rebasin_error(
    msg: impl Into<String>,
    group: Option<String>,
    param: Option<String>,
    axis: Option<usize>,
) -> PyErr {
    RebasinError::new_err((msg.into(), group, param, axis))
}

/// A `RebasinError` that concerns no group, parameter or axis.
fn plain_error(msg: impl Into<String>) -> PyErr {
    rebasin_error(msg, None, None, None)
}

/// Every solver error: the message names the entry and says how to fix it; no field applies.
fn lap_error(e: LapError) -> PyErr {
    plain_error(e.to_string())
}

/// Every thread-count error: the message names `n_threads`; no field applies.
fn pool_error(e: PoolError) -> PyErr {
    plain_error(e.to_string())
}

/// Every matching error, with the group, parameter and axis it names as attributes.
fn match_error(e: MatchError) -> PyErr {
    let msg = e.to_string();
    let (group, param, axis) = match e {
        MatchError::ParamCount { .. }
        | MatchError::InitCount { .. }
        | MatchError::NoSuchGroup { .. } => (None, None, None),
        MatchError::ShapeMismatch { param, .. } | MatchError::DataLength { param, .. } => {
            (None, Some(param), None)
        }
        MatchError::TooFewUnits { group, .. }
        | MatchError::NoMember { group }
        | MatchError::NoSuchParam { group, .. }
        | MatchError::BadInit { group, .. }
        | MatchError::Assignment { group, .. } => (Some(group), None, None),
        MatchError::AxisOutOfRange {
            group, param, axis, ..
        }
        | MatchError::AxisSize {
            group, param, axis, ..
        }
        | MatchError::AxisTwice {
            group, param, axis, ..
        } => (Some(group), Some(param), Some(axis)),
        MatchError::NonFinite { group, param, .. } => (Some(group), Some(param), None),
    };
    rebasin_error(msg, group, param, axis)
}

type SolveOut<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    f64,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

fn contiguous<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>) -> PyResult<&'a [T]> {
    // `as_slice` also accepts Fortran order, which would read the matrix transposed.
    let c_order = a.is_c_contiguous().then(|| a.as_slice().ok()).flatten();
    c_order.ok_or_else(contiguous_error)
}

fn contiguous_error() -> PyErr {
    PyTypeError::new_err(
        "cost: the native solver takes a C-contiguous array; call rebasin_rs.solve_lap, which \
         converts any layout",
    )
}

fn to_i64(v: Vec<usize>) -> Vec<i64> {
    v.into_iter().map(|x| x as i64).collect()
}

fn run<'py, T: CostValue + numpy::Element>(
    py: Python<'py>,
    cost: &[T],
    shape: [usize; 2],
    maximize: bool,
    warm: Option<(&[i64], &[f64], &[f64])>,
) -> PyResult<SolveOut<'py>> {
    let warm = warm.map(|(row_to_col, u, v)| WarmStart { row_to_col, u, v });
    let sol = py
        .detach(|| lap::solve(cost, shape[0], shape[1], maximize, warm))
        .map_err(lap_error)?;
    Ok((
        PyArray1::from_vec(py, to_i64(sol.row_ind)),
        PyArray1::from_vec(py, to_i64(sol.col_ind)),
        sol.objective,
        PyArray1::from_vec(py, sol.u),
        PyArray1::from_vec(py, sol.v),
    ))
}

/// Solves a dense linear assignment problem (Jonker-Volgenant) with the GIL released.
///
/// Low-level: `cost` must be a C-contiguous float32 or float64 array; the public wrapper
/// `rebasin_rs.solve_lap` accepts any array-like. Returns `(row_ind, col_ind, objective, u, v)`.
#[pyfunction]
#[pyo3(signature = (cost, maximize, warm_row_to_col=None, warm_u=None, warm_v=None))]
fn solve_lap<'py>(
    py: Python<'py>,
    cost: &Bound<'py, PyAny>,
    maximize: bool,
    warm_row_to_col: Option<PyReadonlyArray1<'py, i64>>,
    warm_u: Option<PyReadonlyArray1<'py, f64>>,
    warm_v: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<SolveOut<'py>> {
    let warm = match (&warm_row_to_col, &warm_u, &warm_v) {
        (Some(r), Some(u), Some(v)) => Some((
            r.as_slice()
                .map_err(|_| PyTypeError::new_err("warm_row_to_col must be contiguous"))?,
            u.as_slice()
                .map_err(|_| PyTypeError::new_err("warm_u must be contiguous"))?,
            v.as_slice()
                .map_err(|_| PyTypeError::new_err("warm_v must be contiguous"))?,
        )),
        (None, None, None) => None,
        _ => {
            return Err(plain_error(
                "warm_row_to_col, warm_u and warm_v go together: pass all three or none",
            ))
        }
    };
    if let Ok(a) = cost.extract::<PyReadonlyArray2<'py, f64>>() {
        let shape = [a.shape()[0], a.shape()[1]];
        return run(py, contiguous(&a)?, shape, maximize, warm);
    }
    if let Ok(a) = cost.extract::<PyReadonlyArray2<'py, f32>>() {
        let shape = [a.shape()[0], a.shape()[1]];
        return run(py, contiguous(&a)?, shape, maximize, warm);
    }
    Err(PyTypeError::new_err(
        "cost: the native solver takes a 2-D float32 or float64 numpy array; call \
         rebasin_rs.solve_lap, which converts any real array-like",
    ))
}

/// `(row_ind, col_ind)`, as scipy returns them.
type Assignment<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

/// Matrices of at most this many entries are solved with the GIL held: releasing and taking it
/// back costs more than solving them.
const SMALL: usize = 1024;

fn assign<'py, T: CostValue + numpy::Element>(
    py: Python<'py>,
    a: &Bound<'py, PyArray2<T>>,
    maximize: bool,
) -> PyResult<Assignment<'py>> {
    let (rows, cols) = (a.shape()[0], a.shape()[1]);
    let sol = if rows * cols <= SMALL && a.is_c_contiguous() {
        // SAFETY: the GIL is held for the whole solve, so no Python code can write to the array
        // meanwhile; skipping rust-numpy's borrow registry is a third of a tiny matrix's call.
        let cost = unsafe { a.as_slice() }.map_err(|_| contiguous_error())?;
        lap::solve(cost, rows, cols, maximize, None)
    } else {
        let ro = a.readonly();
        let cost = contiguous(&ro)?;
        py.detach(|| lap::solve(cost, rows, cols, maximize, None))
    }
    .map_err(lap_error)?;
    Ok((
        PyArray1::from_iter(py, sol.row_ind.iter().map(|&i| i as i64)),
        PyArray1::from_iter(py, sol.col_ind.iter().map(|&j| j as i64)),
    ))
}

/// Drop-in replacement for ``scipy.optimize.linear_sum_assignment``, much faster at scale.
///
/// Same contract as scipy, checked by running scipy's own test file against it: any 2-D real
/// array-like, rectangular in either orientation; returns ``(row_ind, col_ind)`` as int64 arrays
/// sorted by row, of length ``min(rows, cols)``; ``+inf`` marks a forbidden pair; an infeasible
/// matrix, NaN or ``-inf`` (``+inf`` when maximising) and a non-matrix raise ``ValueError``; an
/// array that does not cast safely to float64 (strings, objects, dates, complex, long double)
/// raises ``TypeError``; an empty matrix gives empty arrays; ties are broken as scipy does where
/// its rule forces an answer (a constant matrix gives the identity). A native function, as
/// scipy's is: a call on a tiny matrix costs no more than scipy's.
///
/// Args:
///     cost_matrix: The cost matrix of the bipartite graph.
///     maximize: Calculate a maximum weight matching instead of a minimum.
///
/// Returns:
///     ``(row_ind, col_ind)``: ``cost_matrix[row_ind, col_ind].sum()`` is optimal.
///
/// Raises:
///     ValueError: as scipy does (not a matrix, invalid entries, infeasible matrix); a
///         :class:`RebasinError`.
///     TypeError: as scipy does: an array whose dtype does not cast safely to float64.
///
/// Example:
///     >>> import numpy as np, rebasin_rs as rb
///     >>> rb.linear_sum_assignment(np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]]))
///     (array([0, 1, 2]), array([1, 0, 2]))
#[pyfunction]
#[pyo3(signature = (cost_matrix, maximize=None), text_signature = "(cost_matrix, maximize=False)")]
fn linear_sum_assignment<'py>(
    py: Python<'py>,
    cost_matrix: &Bound<'py, PyAny>,
    maximize: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let maximize = match maximize {
        None => false,
        Some(m) => m.is_truthy()?,
    };
    if let Ok(a) = cost_matrix.cast::<PyArray2<f64>>() {
        if usable(a) {
            return Ok(assign(py, a, maximize)?.into_pyobject(py)?.into_any());
        }
    }
    if let Ok(a) = cost_matrix.cast::<PyArray2<f32>>() {
        if usable(a) {
            return Ok(assign(py, a, maximize)?.into_pyobject(py)?.into_any());
        }
    }
    // Anything else is converted as scipy converts it (`PyArray_ContiguousFromAny(cost,
    // NPY_DOUBLE, 0, 0)`: a safe cast, lists read element by element as floats). What that
    // refuses, and anything but a matrix, goes to the Python conversion, which words the error.
    if let Some(a) = as_f64_matrix(py, cost_matrix) {
        return Ok(assign(py, &a, maximize)?.into_pyobject(py)?.into_any());
    }
    py.import("rebasin_rs._lap")?
        .getattr("_linear_sum_assignment")?
        .call1((cost_matrix, maximize))
}

/// C-ordered and aligned: readable as a slice. Anything else (a view of a buffer at an odd
/// offset, Fortran order) is converted first, as numpy copies it for scipy.
fn usable<T: numpy::Element>(a: &Bound<'_, PyArray2<T>>) -> bool {
    // SAFETY: reading the flags of a live array object with the GIL held.
    let flags = unsafe { (*a.as_array_ptr()).fields.flags };
    a.is_c_contiguous() && flags & NPY_ARRAY_ALIGNED != 0
}

/// `x` as a C-ordered float64 matrix, converted as scipy converts its input; `None` where numpy
/// refuses it or it is not 2-D (the error is dropped: the caller words its own).
fn as_f64_matrix<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> Option<Bound<'py, PyArray2<f64>>> {
    // SAFETY: the numpy C API with the GIL held; PyArray_FromAny steals the descriptor and
    // returns a new reference or NULL with an exception set.
    let converted = unsafe {
        let descr = PY_ARRAY_API.PyArray_DescrFromType(py, NPY_TYPES::NPY_DOUBLE as c_int);
        let ptr = PY_ARRAY_API.PyArray_FromAny(
            py,
            x.as_ptr(),
            descr,
            2,
            2,
            NPY_ARRAY_DEFAULT,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, ptr)
    };
    converted.ok()?.cast_into::<PyArray2<f64>>().ok()
}

/// `(row_ind, col_ind)` only, as `scipy.optimize.linear_sum_assignment` returns: the potentials
/// and the objective of [`solve_lap`] are not built, which is most of a tiny matrix's call.
/// `cost` must be a C-contiguous float32 or float64 array.
#[pyfunction]
fn assign_cold<'py>(
    py: Python<'py>,
    cost: &Bound<'py, PyAny>,
    maximize: bool,
) -> PyResult<Assignment<'py>> {
    if let Ok(a) = cost.cast::<PyArray2<f64>>() {
        return assign(py, a, maximize);
    }
    if let Ok(a) = cost.cast::<PyArray2<f32>>() {
        return assign(py, a, maximize);
    }
    Err(PyTypeError::new_err(
        "cost: the native solver takes a 2-D float32 or float64 numpy array; call \
         rebasin_rs.linear_sum_assignment, which converts any real array-like",
    ))
}

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
type GroupIn = (String, usize, Vec<(usize, usize)>);

fn to_groups(groups: Vec<GroupIn>) -> Vec<Group> {
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
fn check_names(names: &[String], n_params: usize) -> PyResult<()> {
    if names.len() == n_params {
        return Ok(());
    }
    Err(plain_error(format!(
        "names: {} names given for {n_params} parameters; give one per parameter",
        names.len()
    )))
}

/// The timings as a dict, in the order the work happens.
fn timings_dict<'py>(py: Python<'py>, t: &Timings) -> PyResult<Bound<'py, PyDict>> {
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

fn perms_from(list: &[PyReadonlyArray1<'_, i64>], label: &str) -> PyResult<Vec<Vec<usize>>> {
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

type WarmOut<'py> = Option<(
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
)>;

type MatchOut<'py> = (
    Vec<Bound<'py, PyArray1<i64>>>,
    f64,
    usize,
    Vec<f64>,
    Vec<Vec<usize>>,
    Vec<WarmOut<'py>>,
    Bound<'py, PyDict>,
);

type WarmIn<'py> = Option<(
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
fn weight_matching<'py>(
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
    let warm = warm.map(warm_from);
    let held_a = hold(&params_a, dtypes_a.as_deref(), "params_a")?;
    let held_b = hold(&params_b, dtypes_b.as_deref(), "params_b")?;
    let (shapes_a, data_a) = borrow(&held_a, "params_a")?;
    let (shapes_b, data_b) = borrow(&held_b, "params_b")?;
    check_names(&names, params_a.len())?;
    let init = init.map(|l| perms_from(&l, "init")).transpose()?;
    let groups = to_groups(groups);
    let opts = Options {
        max_iter,
        seed,
        init,
        forward,
        warm,
        max_cost_bytes,
    };
    // Refused before anything starts; the pool itself is built (its threads started) below,
    // without the GIL.
    if let Some(n) = n_threads {
        pool::check(n).map_err(pool_error)?;
    }
    let res = py.detach(|| {
        let ta = tensors(&names, &shapes_a, &data_a);
        let tb = tensors(&names, &shapes_b, &data_b);
        pool::install(n_threads, || {
            matching::weight_matching(&groups, &ta, &tb, &opts)
        })
    });
    let res = res.map_err(pool_error)?.map_err(match_error)?;
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
fn warm_from(list: Vec<WarmIn<'_>>) -> Vec<Option<lap::LapSolution>> {
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
fn warm_to_py(py: Python<'_>, warm: Vec<Option<lap::LapSolution>>) -> Vec<WarmOut<'_>> {
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
fn group_cost<'py>(
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
fn visit_orders(n_groups: usize, seed: u64, sweeps: usize) -> Vec<Vec<usize>> {
    matching::visit_orders(n_groups, seed, sweeps)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_THREADS", pool::MAX_THREADS)?;
    m.add_function(wrap_pyfunction!(solve_lap, m)?)?;
    m.add_function(wrap_pyfunction!(assign_cold, m)?)?;
    m.add_function(wrap_pyfunction!(linear_sum_assignment, m)?)?;
    m.add_function(wrap_pyfunction!(weight_matching, m)?)?;
    m.add_function(wrap_pyfunction!(visit_orders, m)?)?;
    m.add_function(wrap_pyfunction!(group_cost, m)?)?;
    Ok(())
}

//! Weight matching whose cost products a Python object computes (the torch backend,
//! `rebasin_rs.torch._products.TorchProducts`, on the device where the weights are): the engine
//! runs without the GIL and takes it only to call that object, from its one driving thread.

use crate::matching::{check_names, match_out, options, GroupIn, MatchOut, WarmIn};
use crate::{match_error, pool_error};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use rebasin_core::matching::{self, Index, MatchError, Product, Products};
use rebasin_core::pool;

/// A Python object with `add_products(n, requests)`, `objective(parts)` and
/// `first_non_finite(params)` (see `TorchProducts`). Its first exception is kept, to be raised
/// as it is once the engine has stopped.
struct PyProducts {
    obj: Py<PyAny>,
    err: Option<PyErr>,
}

/// An axis's positions for Python: None for all of them, else an int64 array.
fn index_py<'py>(py: Python<'py>, idx: &[Index<'_>]) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<Option<Bound<'py, PyArray1<i64>>>> = idx
        .iter()
        .map(|i| match i {
            Index::All(_) => None,
            Index::Map(m) => Some(PyArray1::from_iter(py, m.iter().map(|&x| x as i64))),
        })
        .collect();
    PyList::new(py, items)
}

impl PyProducts {
    /// Runs `call` with the GIL; an exception is kept and stops the engine.
    fn attach<R>(
        &mut self,
        call: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<R>,
    ) -> Result<R, MatchError> {
        let obj = &self.obj;
        Python::attach(|py| call(py, obj.bind(py))).map_err(|e| {
            let reason = e.to_string();
            self.err.get_or_insert(e);
            MatchError::Products { reason }
        })
    }
}

impl Products for PyProducts {
    fn add_products(
        &mut self,
        n: usize,
        requests: &[Product<'_>],
        c: &mut [f32],
    ) -> Result<(), MatchError> {
        self.attach(|py, obj| {
            let reqs = requests
                .iter()
                .map(|r| {
                    let old = r.b_old.as_deref().map(|o| index_py(py, o)).transpose()?;
                    (
                        r.param,
                        PyTuple::new(py, r.shape)?,
                        r.axis,
                        index_py(py, &r.a)?,
                        index_py(py, &r.b)?,
                        old,
                    )
                        .into_pyobject(py)
                })
                .collect::<PyResult<Vec<_>>>()?;
            let out = obj.call_method1("add_products", (n, reqs))?;
            let arr: PyReadonlyArray2<'_, f32> = out.extract().map_err(|_| {
                PyTypeError::new_err("add_products must return a float32 numpy array")
            })?;
            let s = arr
                .is_c_contiguous()
                .then(|| arr.as_slice().ok())
                .flatten()
                .filter(|_| arr.shape() == [n, n])
                .ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "add_products must return a C-contiguous ({n}, {n}) array, got shape {:?}",
                        arr.shape()
                    ))
                })?;
            for (x, y) in c.iter_mut().zip(s) {
                *x += y;
            }
            Ok(())
        })
    }

    fn objective(&mut self, parts: &[(usize, Vec<Index<'_>>)]) -> Result<f64, MatchError> {
        self.attach(|py, obj| {
            let parts = parts
                .iter()
                .map(|(p, idx)| Ok((*p, index_py(py, idx)?)))
                .collect::<PyResult<Vec<_>>>()?;
            obj.call_method1("objective", (parts,))?.extract()
        })
    }

    fn first_non_finite(&mut self, params: &[usize]) -> Result<Option<(usize, char)>, MatchError> {
        self.attach(|_, obj| {
            obj.call_method1("first_non_finite", (params.to_vec(),))?
                .extract()
        })
    }
}

/// Runs weight matching with the cost products, the objective and the finiteness check computed
/// by `products` (an object holding both models' weights; see `TorchProducts`); the engine gets
/// the parameters' names and shapes only.
///
/// Low-level: arguments as for `weight_matching`, with `shapes` (one per parameter) in place of
/// the arrays. An exception raised by `products` is raised as it is.
#[pyfunction]
#[pyo3(signature = (groups, names, shapes, products, max_iter, seed, init=None, n_threads=None, forward=false, warm=None, max_cost_bytes=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_matching_on<'py>(
    py: Python<'py>,
    groups: Vec<GroupIn>,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    products: Bound<'py, PyAny>,
    max_iter: usize,
    seed: u64,
    init: Option<Vec<PyReadonlyArray1<'py, i64>>>,
    n_threads: Option<usize>,
    forward: bool,
    warm: Option<Vec<WarmIn<'py>>>,
    max_cost_bytes: Option<usize>,
) -> PyResult<MatchOut<'py>> {
    check_names(&names, shapes.len())?;
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
    let mut backend = PyProducts {
        obj: products.unbind(),
        err: None,
    };
    let res = py.detach(|| {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        pool::install(n_threads, || {
            matching::weight_matching_on(&groups, &names, &shapes, &mut backend, &opts)
        })
    });
    if let Some(e) = backend.err.take() {
        return Err(e);
    }
    let res = res.map_err(pool_error)?.map_err(match_error)?;
    match_out(py, res)
}

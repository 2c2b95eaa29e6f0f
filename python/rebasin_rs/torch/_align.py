"""Aligning one model to another: the spec, the method (weight matching, activation matching,
the straight-through estimator), and B permuted on its own device."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

import torch

from rebasin_rs._errors import RebasinError
from rebasin_rs._matching import MatchingResult, check_int, weight_matching
from rebasin_rs._spec import PermutationSpec, check_spec, compare_states
from rebasin_rs.torch._apply import check_finite, complete_perms, learnable_spec, stored_weights, permute_model
from rebasin_rs.torch._methods import activation_matching, ste
from rebasin_rs.torch._utils import batch_args, check_materialized, check_module
from rebasin_rs.torch.infer._infer import infer_spec

METHODS = ("weight", "activation", "ste")


def _example_from(data: Any) -> Any:
    """The first input of the first batch, as example inputs for tracing."""
    args, kwargs = batch_args(next(iter(data)))
    return {k: v[:1] for k, v in kwargs.items()} if kwargs else args[0][:1]


def _resolve_spec(model_a: torch.nn.Module, spec: Any, example_inputs: Any) -> PermutationSpec:
    if spec is not None:
        check_spec(spec)
        return spec
    if example_inputs is None:
        raise RebasinError("align: pass example_inputs (to trace model_a and infer its spec) or spec=")
    return infer_spec(model_a, example_inputs)


def _check_options(method: str, *, max_iter: Any, seed: Any, init: Any, inplace: Any, num_batches: Any,
                   epochs: Any, lr: Any, products: Any, tf32: Any) -> None:
    """align's options, checked before any work: each was once truncated, ignored or failed
    deep inside with an error that did not name it."""
    check_int(max_iter, "max_iter", low=1, high=2**63)
    check_int(seed, "seed")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    if num_batches is not None:
        check_int(num_batches, "num_batches", low=1)
    check_int(epochs, "epochs", low=1)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a real number, got {type(lr).__name__}")
    if not (math.isfinite(lr) and lr > 0):
        raise RebasinError(f"lr must be a positive finite number, got {lr}")
    if init is not None and not isinstance(init, (str, Mapping)):
        raise TypeError(f"init must be a mapping of permutations, 'forward' or None, got {type(init).__name__}")
    if isinstance(init, Mapping) and method != "weight":
        raise RebasinError(f"align: init= is a start for weight matching; method={method!r} does not use it")
    if products not in ("auto", "cpu", "torch"):
        raise RebasinError(f"align: products must be 'auto', 'cpu' or 'torch', got {products!r}")
    if not isinstance(tf32, bool):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    if (products != "auto" or tf32) and method != "weight":
        raise RebasinError(f"align: products= and tf32= choose how weight matching computes its products; "
                           f"method={method!r} does not use them")


def _weight(model_a, model_b, spec, *, init, **options) -> MatchingResult:
    mspec = learnable_spec(model_a, spec)
    if not mspec.groups:
        return MatchingResult(perms={}, objective=0.0, sweeps=0, history=[], orders=[])
    names = mspec.real_params()
    if isinstance(init, Mapping):
        for g in mspec.groups:
            if g not in init:
                raise RebasinError(
                    f"align: init has no permutation for group {g!r}; give one for every group of the spec "
                    "(for instance the perms of an earlier result), or init='forward' or None", group=g
                )
        init = {g: init[g] for g in mspec.groups}
    return weight_matching(mspec, stored_weights(model_a, names), stored_weights(model_b, names),
                           init=init, **options)


def align(model_a: torch.nn.Module, model_b: torch.nn.Module, example_inputs: Any = None, *,
          spec: PermutationSpec | None = None, method: str = "weight", max_iter: int = 100, seed: int = 0,
          init: Any = "forward", n_threads: int | None = None, inplace: bool = False,
          max_cost_memory: int | None = None, products: str = "auto", tf32: bool = False,
          data: Any = None, num_batches: int | None = None, epochs: int = 1, lr: float = 1e-3,
          loss_fn: Any = None, progress: bool | None = None,
          ) -> tuple[torch.nn.Module, MatchingResult]:
    """Aligns model B to model A: finds the permutations of B's hidden units that best match A and
    returns B permuted, on B's device and in B's dtype.

    The weights are read where they are, in their stored dtype (float16 and bfloat16 are widened
    block by block, never copied whole), matched by the Rust engine with the GIL released
    (learnable parameters only: buffers such as BatchNorm running statistics are permuted with
    their units but do not weigh in the matching), and the permutations are applied back on the
    device. Models on a GPU have their cost products computed there by torch (``products=``).

    Args:
        model_a: The reference model.
        model_b: The model to align (left untouched unless ``inplace=True``).
        example_inputs: Inputs to trace ``model_a`` with when no ``spec`` is given.
        spec: A permutation spec; inferred from ``model_a`` by :func:`infer_spec` if omitted.
        method: ``"weight"`` (weight matching, the paper's Algorithm 1); ``"activation"``
            (activation matching over ``data``: cross-covariance of the two models' activations,
            streamed in float64; torch.fx-traceable models); ``"ste"`` (the straight-through
            estimator, Algorithm 2, ``epochs`` passes over ``data`` with Adam at ``lr``, weight
            matching in Rust at every step, warm-started; the best epoch's permutation is kept).
        data: Batches for ``"activation"`` and ``"ste"``: tensors or ``(inputs, targets)``.
        num_batches: At most this many batches for ``"activation"``.
        epochs: For ``"ste"``: passes over ``data``.
        lr: For ``"ste"``: Adam's learning rate.
        loss_fn: For ``"ste"``: ``loss_fn(outputs, targets)``, cross-entropy by default.
        progress: Progress bars for the data passes (default: when stderr is a terminal).
        max_iter: As for :func:`rebasin_rs.weight_matching`.
        seed: As for :func:`rebasin_rs.weight_matching`.
        init: As for :func:`rebasin_rs.weight_matching`, but defaults to ``"forward"`` (one pass
            from the input side before the sweeps, which recovers a permuted copy exactly);
            ``None`` starts from the identity as the paper.
        n_threads: As for :func:`rebasin_rs.weight_matching`.
        max_cost_memory: For ``"weight"``: bytes of cost matrices the engine may keep, as for
            :func:`rebasin_rs.weight_matching` (default: no limit).
        products: For ``"weight"``: who computes the cost products, as for
            :func:`rebasin_rs.weight_matching`: by default torch on the GPU when both models are
            on one CUDA device, else the Rust kernels on CPU threads.
        tf32: For ``"weight"`` with torch products: allow TF32 matrix products, as for
            :func:`rebasin_rs.weight_matching`.
        inplace: Permute ``model_b`` itself instead of a copy; its gradients (``.grad``) are
            permuted with it (a copy has none). Optimizer state is not: build the optimizer
            after aligning.

    Returns:
        ``(aligned_b, result)``; ``result.perms`` has a permutation for every group of the spec
        (the identity for a group that holds buffers only).

    Raises:
        ValueError: (:class:`~rebasin_rs.RebasinError`) no spec and no example inputs, an
            unknown method, models of different architectures (their state dicts differ in a
            name, a shape, or a float vs non-float dtype: ``param`` names the first), a spec
            that does not fit them, a NaN or inf in a tensor of B that is permuted (parameters
            and buffers such as BatchNorm statistics), a model on the meta device, ``init``
            missing a group, or an option out of range (``max_iter`` below 1, ``epochs``...).
        TypeError: a model is not a ``torch.nn.Module``, or an option has the wrong type
            (``max_iter=1.5``, ``seed="0"``, ``inplace=1``...).

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> torch.manual_seed(0) and None
        >>> a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> b, _ = rbt.align(a, rbt.permute_model(a, rbt.infer_spec(a, torch.randn(1, 4)),
        ...                  {"P_0": torch.randperm(8)}), torch.randn(1, 4))
        >>> bool(torch.equal(b[0].weight, a[0].weight))
        True
    """
    check_module(model_a, "model_a")
    check_module(model_b, "model_b")
    if method not in METHODS:
        raise RebasinError(f"align: unknown method {method!r}; use 'weight', 'activation' or 'ste'")
    _check_options(method, max_iter=max_iter, seed=seed, init=init, inplace=inplace, num_batches=num_batches,
                   epochs=epochs, lr=lr, products=products, tf32=tf32)
    if method != "weight" and data is None:
        raise RebasinError(f"align: method={method!r} needs data= (batches of inputs, or (inputs, targets))")
    check_materialized(model_a, "model_a")
    check_materialized(model_b, "model_b")
    state_a, state_b = model_a.state_dict(keep_vars=True), model_b.state_dict(keep_vars=True)
    # Before the spec: a spec inferred from A covers only what A's forward uses, and another
    # architecture (a ResNet-34 as B of a ResNet-18) can share all of that, leaving B's other
    # entries unaligned in a model that computes something else.
    compare_states(state_a, state_b, ("model_a", "model_b"))
    if example_inputs is None and data is not None:
        example_inputs = _example_from(data)
    spec = _resolve_spec(model_a, spec, example_inputs)
    sizes = spec.validate(state_a, state_b, members_only=True)
    check_finite(model_b, spec.real_params(), "model_b")
    options = dict(max_iter=max_iter, seed=seed, n_threads=n_threads)
    if method == "activation":
        result = activation_matching(model_a, model_b, spec, example_inputs, data, num_batches=num_batches,
                                     progress=progress, **options)
    elif method == "ste":
        result, _ = ste(model_a, model_b, spec, data, epochs=epochs, lr=lr, loss_fn=loss_fn, progress=progress,
                        **options)
    else:
        result = _weight(model_a, model_b, spec, init=init, max_cost_memory=max_cost_memory, products=products,
                         tf32=tf32, **options)
        result = dataclasses.replace(result, perms=complete_perms(sizes, result.perms))
    return permute_model(model_b, spec, result.perms, inplace=inplace), result

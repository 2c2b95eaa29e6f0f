"""PyTorch adapters: infer a model's permutation spec, align two models, apply permutations on
the model's own device, and check that a spec keeps the function.

Requires the ``torch`` extra (``pip install "rebasin-rs[torch]"``).

Example:
    >>> import torch, rebasin_rs.torch as rbt
    >>> make = lambda: torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> a, b = make(), make()
    >>> b_aligned, result = rbt.align(a, b, torch.randn(1, 4))
    >>> sorted(result.perms)
    ['P_0']
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rebasin_rs.torch needs PyTorch: pip install 'rebasin-rs[torch]' (or install torch)"
    ) from e

import numpy as np

from rebasin_rs._matching import MatchingResult, apply_permutation, weight_matching
from rebasin_rs._spec import PermutationSpec
from rebasin_rs.torch._infer import Coverage, _device_of, _eval_mode, _inputs, _to, infer_spec, spec_coverage

__all__ = [
    "Coverage",
    "InterpolationCurve",
    "MergeManyModels",
    "align",
    "check_equivalence",
    "extract_weights",
    "infer_spec",
    "interpolation_curve",
    "merge",
    "merge_many",
    "permute_model",
    "plot_curves",
    "repair",
    "reset_bn_stats",
    "spec_coverage",
]


def _check_module(model: Any, label: str) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{label} must be a torch.nn.Module, got {type(model).__name__}")


def extract_weights(model: torch.nn.Module, names: Any = None) -> dict[str, np.ndarray]:
    """The model's state as float32 CPU numpy arrays (detached; one transfer per tensor from an
    accelerator; no copy for a CPU float32 tensor). ``names`` restricts it to those entries.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> w = rbt.extract_weights(torch.nn.Linear(3, 2))
        >>> w["weight"].dtype, w["weight"].shape
        (dtype('float32'), (2, 3))
    """
    _check_module(model, "model")
    state = model.state_dict(keep_vars=True)
    keep = state.keys() if names is None else names
    out = {}
    for n in keep:
        t = state[n]
        if t.is_floating_point():
            out[n] = t.detach().to("cpu", torch.float32).contiguous().numpy()
    return out


def permute_model(model: torch.nn.Module, spec: PermutationSpec, perms: Any, *,
                  inplace: bool = False) -> torch.nn.Module:
    """Applies permutations to a model's parameters and buffers, on their own device and in their
    own dtype.

    Args:
        model: The model to permute.
        spec: Its permutation spec (names from ``model.state_dict()``).
        perms: Permutation name -> int array or tensor (``perm[i]`` is the unit moved to slot i),
            for instance ``MatchingResult.perms``.
        inplace: Permute ``model`` itself; by default a deep copy is permuted and ``model`` is
            left untouched.

    Returns:
        The permuted model (``model`` itself when ``inplace=True``).

    Raises:
        ValueError: the spec does not fit the model, or a permutation is missing or invalid.

    Example:
        >>> import numpy as np, torch, rebasin_rs.torch as rbt
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> spec = rbt.infer_spec(net, torch.randn(1, 2))
        >>> moved = rbt.permute_model(net, spec, {"P_0": np.array([2, 0, 1])})
        >>> bool(torch.equal(moved[0].weight[0], net[0].weight[2]))
        True
    """
    _check_module(model, "model")
    if not isinstance(spec, PermutationSpec):
        raise TypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    state = model.state_dict(keep_vars=True)
    names = spec.real_params()
    sub = {n: state[n].detach() for n in names if n in state}
    new = apply_permutation(spec, perms, sub)  # validates names, sizes and permutations
    if inplace:
        with torch.no_grad():
            for n in names:
                state[n].copy_(new[n])
        return model
    # The copy takes the permuted tensors in place of the originals (deepcopy's memo), so the
    # permuted parameters are not copied twice.
    memo: dict[int, Any] = {}
    for n in names:
        t = state[n]
        if id(t) not in memo:
            fresh = new[n].to(memory_format=torch.contiguous_format)
            memo[id(t)] = torch.nn.Parameter(fresh, requires_grad=t.requires_grad) if isinstance(
                t, torch.nn.Parameter) else fresh
    return copy.deepcopy(model, memo)


def align(model_a: torch.nn.Module, model_b: torch.nn.Module, example_inputs: Any = None, *,
          spec: PermutationSpec | None = None, method: str = "weight", max_iter: int = 100, seed: int = 0,
          init: Any = "forward", n_threads: int | None = None, inplace: bool = False,
          data: Any = None, num_batches: int | None = None, epochs: int = 1, lr: float = 1e-3,
          loss_fn: Any = None, progress: bool | None = None,
          ) -> tuple[torch.nn.Module, MatchingResult]:
    """Aligns model B to model A: finds the permutations of B's hidden units that best match A and
    returns B permuted, on B's device and in B's dtype.

    The weights are read once (detached, to CPU float32), matched by the Rust engine with the GIL
    released (learnable parameters only: buffers such as BatchNorm running statistics are
    permuted with their units but do not weigh in the matching), and the permutations are applied
    back on the device.

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
        epochs, lr, loss_fn: For ``"ste"`` (``loss_fn(outputs, targets)``, cross-entropy by default).
        progress: Progress bars for the data passes (default: when stderr is a terminal).
        max_iter, seed, init, n_threads: As for :func:`rebasin_rs.weight_matching`; ``init``
            defaults to ``"forward"`` (one pass from the input side before the sweeps, which
            recovers a permuted copy exactly); ``None`` starts from the identity as the paper.
        inplace: Permute ``model_b`` itself instead of a copy.

    Returns:
        ``(aligned_b, result)``; ``result.perms`` has a permutation for every group of the spec
        (the identity for a group that holds buffers only).

    Raises:
        ValueError: no spec and no example inputs, an unknown method, models of different
            architectures, or a spec that does not fit them.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> torch.manual_seed(0) and None
        >>> a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> b, _ = rbt.align(a, rbt.permute_model(a, rbt.infer_spec(a, torch.randn(1, 4)),
        ...                  {"P_0": torch.randperm(8)}), torch.randn(1, 4))
        >>> bool(torch.equal(b[0].weight, a[0].weight))
        True
    """
    _check_module(model_a, "model_a")
    _check_module(model_b, "model_b")
    if method not in ("weight", "activation", "ste"):
        raise ValueError(f"align: unknown method {method!r}; use 'weight', 'activation' or 'ste'")
    if method != "weight" and data is None:
        raise ValueError(f"align: method={method!r} needs data= (batches of inputs, or (inputs, targets))")
    if example_inputs is None and data is not None:
        first = next(iter(data))
        example_inputs = first[0][:1] if isinstance(first, (list, tuple)) else first[:1]
    if spec is None:
        if example_inputs is None:
            raise ValueError("align: pass example_inputs (to trace model_a and infer its spec) or spec=")
        spec = infer_spec(model_a, example_inputs)
    elif not isinstance(spec, PermutationSpec):
        raise TypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    state_a = model_a.state_dict(keep_vars=True)
    state_b = model_b.state_dict(keep_vars=True)
    sizes = spec.validate(state_a, state_b)
    if method != "weight":
        from rebasin_rs.torch._methods import activation_matching, ste

        if method == "activation":
            result = activation_matching(model_a, model_b, spec, example_inputs, data, num_batches=num_batches,
                                         progress=progress, max_iter=max_iter, seed=seed, n_threads=n_threads)
        else:
            result, _ = ste(model_a, model_b, spec, data, epochs=epochs, lr=lr, loss_fn=loss_fn, progress=progress,
                            max_iter=max_iter, seed=seed, n_threads=n_threads)
        return permute_model(model_b, spec, result.perms, inplace=inplace), result
    learnable = {n for n, _ in model_a.named_parameters(remove_duplicate=False)}
    mspec = spec.restrict(learnable)
    if mspec.groups:
        names = mspec.real_params()
        result = weight_matching(
            mspec, extract_weights(model_a, names), extract_weights(model_b, names),
            max_iter=max_iter, seed=seed,
            init=init if init is None or isinstance(init, str) else {g: init[g] for g in mspec.groups},
            n_threads=n_threads,
        )
    else:
        result = MatchingResult(perms={}, objective=0.0, sweeps=0, history=[], orders=[])
    perms = {g: result.perms.get(g, np.arange(n)) for g, n in sizes.items()}
    aligned = permute_model(model_b, spec, perms, inplace=inplace)
    return aligned, dataclasses.replace(result, perms=perms)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def check_equivalence(model: torch.nn.Module, spec: PermutationSpec, example_inputs: Any, *,
                      seed: int = 0) -> float:
    """The largest absolute difference between the outputs of ``model`` and of a copy permuted by
    random permutations of every group of ``spec``: about float rounding for a correct spec.

    Both run in eval mode without gradients; ``model`` is not modified.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> rbt.check_equivalence(net, rbt.infer_spec(net, x), x) < 1e-5
        True
    """
    _check_module(model, "model")
    if not isinstance(spec, PermutationSpec):
        raise TypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    sizes = spec.validate(model.state_dict(keep_vars=True))
    rng = np.random.default_rng(seed)
    perms = {g: rng.permutation(n) for g, n in sizes.items()}
    permuted = permute_model(model, spec, perms)
    args, kwargs = _inputs(example_inputs)
    device = _device_of(model)
    args, kwargs = _to(args, device), _to(kwargs, device)
    with _eval_mode(model):
        ref = _flat_outputs(model(*args, **kwargs))
    with _eval_mode(permuted):
        out = _flat_outputs(permuted(*args, **kwargs))
    if len(ref) != len(out) or not ref:
        raise ValueError("check_equivalence: the model returned no tensor to compare")
    diff = 0.0
    for r, o in zip(ref, out):
        if r.shape != o.shape:
            return float("inf")
        if r.numel():
            diff = max(diff, float((r.double() - o.double()).abs().max()))
    return diff


from rebasin_rs.torch._merge import (  # noqa: E402 - these use the functions above
    InterpolationCurve,
    MergeManyModels,
    interpolation_curve,
    merge,
    merge_many,
    plot_curves,
    repair,
    reset_bn_stats,
)

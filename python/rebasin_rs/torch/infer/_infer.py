"""The tracer's public functions: a model's permutation spec, its coverage, and the graph nodes
where each group's units can be measured."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from rebasin_rs._spec import PermutationSpec
from rebasin_rs.torch._utils import check_module
from rebasin_rs.torch.infer._graph import AbstractTensor, UnitGraph
from rebasin_rs.torch.infer._result import Coverage, build_spec
from rebasin_rs.torch.infer._rules import CAST, SOFTMAX, UNARY
from rebasin_rs.torch.infer._trace import run_rules, trace

# Where activation matching measures a group's units: after nonlinearities, residual adds and
# norms; and the layers' outputs before them, which tell apart units that a ReLU silences on every
# input (dead units have equal, zero, activations after it, and no assignment of them would be
# preferred).
_LAYERS = {"linear", "conv1d", "conv2d", "conv3d"}
_CAPTURE = UNARY - CAST - SOFTMAX | {"add", "add_", "iadd", "batch_norm", "layer_norm", "group_norm"} | _LAYERS
# Largest axis of several groups' factors measured by activation matching: its cross-covariance
# is this squared in float64 (32 MiB at 2048).
FACTORED_MAX = 2048


def _infer(model: nn.Module, example_inputs: Any) -> tuple[PermutationSpec, Coverage, Any, str, UnitGraph, dict]:
    check_module(model, "model")
    gm, placeholders, kind = trace(model, example_inputs)
    units = run_rules(gm, placeholders, set(model.state_dict().keys()))
    spec, cov, roots = build_spec(units)
    return spec, cov, gm, kind, units, roots


def trace_groups(model: nn.Module, example_inputs: Any) -> tuple[PermutationSpec, Any, dict[str, list], str]:
    """(spec, graph module, group -> [(node name, unit axis, is a layer's output)], kind) where a
    node's output carries a group's units as a whole axis: layer outputs, and after
    nonlinearities, residual adds and normalisations (where activation matching measures them).
    An axis made of several groups' factors (a grouped convolution's (groups, within-group)
    channels, attention's (heads, head_dim)) is keyed by its factors instead: a tuple of
    ``(group or None when fixed, size)``, outermost first, for axes of at most
    ``FACTORED_MAX`` units.

    ``kind`` is "fx" (the graph reads the model's own weights and takes its inputs) or "export"
    (Hugging Face models: the graph takes the weights as inputs, see ``graph_inputs``, and is
    specialised to the shapes of ``example_inputs``)."""
    return trace_roles(model, example_inputs)[:4]


def trace_roles(model: nn.Module, example_inputs: Any, *,
                capture: frozenset | set = frozenset()) -> tuple[PermutationSpec, Any, dict, str, dict]:
    """:func:`trace_groups` and the role of every spec member's axis: ``{(member, axis): "in" |
    "out"}``, "in" where the axis is summed against the layer's input (a Linear weight's axis 1),
    "out" where it holds one value per unit (a weight's output rows, a bias, a norm's scale).
    ``capture``: operations whose outputs and first inputs are measured too (zipit measures
    attention's queries and outputs)."""
    spec, _, gm, kind, units, roots = _infer(model, example_inputs)
    points: dict = {name: [] for name in spec.groups}
    by_root = {r: name for name, r in roots.items()}
    # Their first input too (attention's queries: keys and values may be copies broadcast over
    # the query heads that share them, which would read as perfectly correlated heads).
    inputs = {n.args[0].name for n in getattr(gm, "graph", gm).nodes if units.node_ops.get(n.name) in capture
              and n.args and isinstance(n.args[0], torch.fx.Node)} if capture else set()
    for node_name, val in units.env.items():
        op = units.node_ops.get(node_name)
        if not isinstance(val, AbstractTensor) or (op not in _CAPTURE and op not in capture and node_name not in inputs):
            continue
        for k, ax in enumerate(val.axes):
            if len(ax) != 1 or not ax[0]:
                continue
            names = tuple(by_root.get(units.v.find(f)) for f in ax[0])
            if not any(names):
                continue
            if len(names) == 1:
                points[names[0]].append((node_name, k, op in _LAYERS))
            elif units.size(ax) <= FACTORED_MAX:
                key = tuple((g, units.v.size[f]) for g, f in zip(names, ax[0]))
                points.setdefault(key, []).append((node_name, k, op in _LAYERS))
    return spec, gm, points, kind, dict(units.roles)


def infer_spec(model: nn.Module, example_inputs: Any, *, warn: bool = True) -> PermutationSpec:
    """Infers the permutation spec of ``model`` from its traced graph.

    The model is traced with torch.fx (torch.export where fx fails) on ``example_inputs`` (moved
    to the model's device; the model runs once in eval mode without gradients, and its BatchNorm
    statistics and training flags are left as they were). Units that the tracer cannot prove safe
    to permute stay fixed: a spec never changes what the model computes. Teach it operations it
    does not know with :func:`register_rule`.

    Args:
        model: Any ``torch.nn.Module``.
        example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs for
            ``model.forward``. Small inputs are enough (a 32x32 image for a CNN).
        warn: Warn, naming the operations, when hidden units stay fixed because of an operation
            the tracer does not understand or a constraint it cannot express.

    Returns:
        A :class:`~rebasin_rs.PermutationSpec` over ``model.state_dict()`` names (parameters and
        buffers, such as BatchNorm running statistics).

    Raises:
        TypeError: ``model`` is not a module or ``example_inputs`` has an unusable type.
        ValueError: neither tracer can trace the model (the message says why and how to pass a
            spec by hand).

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> spec = rbt.infer_spec(net, torch.randn(1, 4))
        >>> spec.groups["P_0"]
        (('0.weight', 0), ('0.bias', 0), ('2.weight', 1))
    """
    spec, cov = _infer(model, example_inputs)[:2]
    if warn and not cov.hidden:
        warnings.warn(
            f"infer_spec: found no hidden units in {type(model).__name__} (no Linear, convolution, "
            "Embedding or product with a weight whose outputs feed another layer); the spec permutes "
            "nothing. If the model has layers the tracer does not know, teach it with "
            "rebasin_rs.torch.register_rule", stacklevel=2,
        )
    elif warn and not spec.groups:
        warnings.warn(
            f"infer_spec: the spec of {type(model).__name__} permutes none of its {cov.hidden} hidden "
            f"units ({'; '.join(sorted(cov.unpermuted))})", stacklevel=2,
        )
    elif warn and cov.unpermuted:
        detail = "; ".join(f"{n} units: {why}" for why, n in sorted(cov.unpermuted.items(), key=lambda kv: -kv[1])[:8])
        if any(why != "no parameter to permute" for why in cov.unpermuted):
            warnings.warn(
                f"infer_spec: {cov.hidden - cov.permuted} of {cov.hidden} hidden units of "
                f"{type(model).__name__} stay unpermuted ({detail})",
                stacklevel=2,
            )
    return spec


def spec_coverage(model: nn.Module, example_inputs: Any) -> Coverage:
    """The share of ``model``'s hidden units that :func:`infer_spec` permutes, and why the others
    stay fixed.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> rbt.spec_coverage(net, torch.randn(1, 4)).share
        1.0
    """
    return _infer(model, example_inputs)[1]

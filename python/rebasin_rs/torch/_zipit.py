"""ZipIt! (Stoica et al., ICLR 2024): merging models whose features need not correspond one to
one, such as models trained on different label sets. For every group of the traced spec (a
residual stream is one), the features of all ``k`` models are correlated over data and zipped
greedily into as many merged features as one model has: the most correlated pair first, across
models or, within a budget, inside one model; a feature merged already is merged again less
readily. Each merged feature is the mean of the features zipped into it (the *merge* matrix);
each original feature reads its merged one back (the *unmerge* matrix). Every layer of the merged
network is then ``sum_k merge_out^(k) W_k unmerge_in^(k)`` (an output of the model, not merged,
averaged), which for permutations is exactly averaging aligned models.

Attention heads are zipped as whole heads and grouped channels as whole groups: an axis of
several groups' factors ((heads, head_dim), or (batch, heads, tokens, head_dim) with the groups on
separate axes) is measured jointly; its outer factor is zipped first, each pair of heads compared
under their best within-head matching, then the inner factor within the zipped heads.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from rebasin_rs._errors import RebasinError
from rebasin_rs._lap import solve_lap
from rebasin_rs._spec import PermutationSpec
from rebasin_rs.torch._methods import _Capture, _fx_inputs, _shape_key
from rebasin_rs.torch._merge import reset_bn_stats
from rebasin_rs.torch._utils import (batch_args, batches, check_module, device_of, eval_mode, progress_bar, to_device,
                                     without_cache)
from rebasin_rs.torch.infer._infer import FACTORED_MAX, trace_groups, trace_roles
from rebasin_rs.torch.infer._trace import graph_inputs


@dataclass
class ZipResult:
    """What :func:`zipit` returns.

    Attributes:
        merged: The zipped model (a new module; the inputs are not modified).
        merges: Group -> ``(merge, unmerge)``: ``merge`` is ``(n, k n)``, each merged feature the
            mean of the features zipped into it (features of model ``j`` are columns ``j n`` to
            ``(j + 1) n``); ``unmerge`` is ``(k n, n)``, 1 where a feature reads a merged one.
        within: Group -> the number of merges inside one model.
        spec: The spec the groups come from.
    """

    merged: nn.Module
    merges: dict[str, tuple[np.ndarray, np.ndarray]]
    within: dict[str, int]
    spec: PermutationSpec


def _zip(corr: np.ndarray, k: int, n: int, alpha: float, beta: float) -> tuple[list[list[int]], int]:
    """Greedy zipping of ``k n`` features into ``n`` clusters on their correlations: the most
    correlated pair of clusters first; a pair inside one model only while that model has budget
    (``alpha n`` such merges); a merged cluster's correlation to the others is the smaller of its
    parts', times ``beta`` where positive. Returns the clusters and the merges inside one model."""
    size = k * n
    sim = np.array(corr, dtype=np.float64)
    np.fill_diagonal(sim, -np.inf)
    owner = np.repeat(np.arange(k), n)
    clusters = [[f] for f in range(size)]
    pure = owner.copy()  # the model of a cluster made of one model's features only, else -1
    budget = np.full(k, int(alpha * n))

    def close(m: int) -> None:
        # The model's budget is spent: no more merges among its pure clusters.
        own = np.flatnonzero(pure == m)
        sim[np.ix_(own, own)] = -np.inf

    for m in range(k):
        if budget[m] <= 0:
            close(m)
    within = 0
    for _ in range(size - n):
        flat = int(np.argmax(sim))
        p, q = divmod(flat, size)
        if not np.isfinite(sim[p, q]):
            raise RebasinError("zipit: no pair of features left to merge (every remaining pair is inside one model "
                               "past its budget); raise alpha")
        p, q = min(p, q), max(p, q)
        if pure[p] >= 0 and pure[p] == pure[q]:
            within += 1
            budget[pure[p]] -= 1
        else:
            pure[p] = -1
        clusters[p] += clusters[q]
        clusters[q] = []
        merged = np.minimum(sim[p], sim[q])
        merged = np.where(merged > 0, beta * merged, merged)
        sim[p, :], sim[:, p] = merged, merged
        sim[q, :], sim[:, q] = -np.inf, -np.inf
        sim[p, p] = -np.inf
        pure[q] = -2
        if pure[p] >= 0 and budget[pure[p]] <= 0:
            close(int(pure[p]))
    return [c for c in clusters if c], within


def _matrices(clusters: list[list[int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(clusters)
    merge, unmerge = np.zeros((n, size)), np.zeros((size, n))
    for c, members in enumerate(clusters):
        merge[c, members] = 1.0 / len(members)
        unmerge[members, c] = 1.0
    return merge, unmerge


def _zip_groups(corr: dict, sizes: dict[str, int], k: int, alpha: float,
                beta: float) -> tuple[dict[str, list[list[int]]], dict[str, int]]:
    """Group -> (clusters, merges inside one model). A group measured on its own is zipped on its
    correlations; a group met as a factor of measured axes (heads, within-head units, grouped
    channels) on a similarity derived from those axes' correlations (see :func:`_similarity`),
    outer factors first, so that an inner factor is zipped knowing which heads were zipped."""
    keys = [key for key in corr if isinstance(key, tuple)]
    factors = {g for key in keys for g, _ in key if g in sizes}
    clusters: dict[str, list[list[int]]] = {}
    within: dict[str, int] = {}
    for g, n in sizes.items():
        if g in factors:
            continue
        if g not in corr:
            raise RebasinError(f"zipit: group {g!r} has no activation to measure (no layer output carries it, or "
                               f"only axes of more than {FACTORED_MAX} units of several groups do); it cannot be "
                               "zipped: align such models with rbt.align and merge them instead")
        clusters[g], within[g] = _zip(corr[g], k, n, alpha, beta)
    pending = set(factors)
    while pending:
        g = min(pending, key=lambda g: (min([h for h, _ in key].index(g) for key in keys if g in dict(key)), g))
        sim = np.mean([_similarity(corr[key], key, g, k, clusters, pending) for key in keys if g in dict(key)], axis=0)
        clusters[g], within[g] = _zip(sim, k, sizes[g], alpha, beta)
        pending.discard(g)
    return clusters, within


def _similarity(corr: np.ndarray, key: tuple, g: str, k: int, clusters: dict, pending: set) -> np.ndarray:
    """The ``(k n, k n)`` similarity of group ``g``'s units, a factor of an axis of factors
    ``key`` whose features (of all ``k`` models) correlate as ``corr``: the mean correlation of
    two units' features over the other factors' corresponding units. A fixed factor corresponds
    index to index; a factor zipped already, within its clusters (every pair of members, of the
    two models in question); the factors still to zip, by the best one-to-one matching of the
    two units' blocks (one assignment per pair of units: heads compared under their best
    within-head alignment)."""
    names = [h for h, _ in key]
    shape = [s for _, s in key]
    m = len(key)
    t = names.index(g)
    c = corr.reshape(k, *shape, k, *shape)
    # Axis labels: 0 and 1 the two models, 2 + r and 2 + m + r factor r of either side.
    labels = [0, *range(2, 2 + m), 1, *range(2 + m, 2 + 2 * m)]
    for r in range(m):
        if r == t or names[r] in pending:
            continue
        out = [x for x in labels if x not in (2 + r, 2 + m + r)]
        if names[r] is None:  # fixed: index to index
            pairs = np.broadcast_to(np.eye(shape[r]), (k, k, shape[r], shape[r]))
        else:  # zipped: every pair of members of one cluster
            s = shape[r]
            pairs = np.zeros((k, k, s, s))
            for members in clusters[names[r]]:
                f = np.array(members)
                pairs[(f // s)[:, None], (f // s)[None, :], (f % s)[:, None], (f % s)[None, :]] = 1.0
        num = np.einsum(c, labels, pairs, [0, 1, 2 + r, 2 + m + r], out)
        den = pairs.sum((2, 3)).reshape([k if x in (0, 1) else 1 for x in out])  # 0 comes before 1
        c = np.divide(num, den, out=np.zeros(num.shape), where=np.broadcast_to(den > 0, num.shape))
        labels = out
    rest = [r for r in range(m) if r != t and names[r] in pending]
    order = [0, 2 + t, *[2 + r for r in rest], 1, 2 + m + t, *[2 + m + r for r in rest]]
    c = np.einsum(c, labels, order)
    n = shape[t]
    if not rest:
        return c.reshape(k * n, k * n)
    p = math.prod(shape[r] for r in rest)  # the factors still to zip, compared as one block
    c = c.reshape(k * n, p, k * n, p)
    sim = np.zeros((k * n, k * n))
    for i in range(k * n):
        for j in range(i + 1, k * n):
            sim[i, j] = sim[j, i] = solve_lap(c[i, :, j, :], maximize=True).objective / p
    return sim


def _joint_points(points: dict, sizes: dict[str, int]) -> dict:
    """The measurements by node: a node whose output carries groups on several axes (attention's
    (batch, heads, tokens, head_dim), the heads axis perhaps itself (kv heads, queries per kv
    head)) is measured on those axes jointly, keyed by all their factors as an axis of factors
    is (``((group or None, size), ...)``, its axes a tuple); others as they are."""
    by_node: dict[str, list] = {}
    for g, pts in points.items():
        for node, axis, layer in pts:
            by_node.setdefault(node, []).append((axis, g, layer))
    out: dict = {g: [] for g in points}
    for node, entries in by_node.items():
        entries.sort(key=lambda e: e[0])
        if len(entries) == 1:
            axis, g, layer = entries[0]
            out[g].append((node, axis, layer))
            continue
        key = tuple(f for _, g, _ in entries for f in (((g, sizes[g]),) if isinstance(g, str) else g))
        if math.prod(n for _, n in key) <= FACTORED_MAX:
            out.setdefault(key, []).append((node, tuple(a for a, _, _ in entries), entries[0][2]))
    return out


_MEASURE = frozenset({"scaled_dot_product_attention"})


def _uses(points: dict, sizes: dict[str, int]) -> dict[str, list]:
    """Node name -> [(group or axis of factors, its axis or axes)] to measure: every node of a
    measurement (after nonlinearities and norms where there are such nodes). A group met as a
    factor (heads, within-head units, grouped channels) is measured on the axes it is a factor
    of, jointly: alone, its units would be measured with the other factors' units mixed into the
    samples as if those matched one to one."""
    joint = _joint_points(points, sizes)
    factors = {g for key, pts in joint.items() if isinstance(key, tuple) and pts for g, _ in key if g in sizes}
    out: dict[str, list] = {}
    for g, pts in joint.items():
        if not pts or (isinstance(g, str) and g in factors):
            continue
        after = [p for p in pts if not p[2]]
        for node, axis, _ in after or pts:
            out.setdefault(node, []).append((g, axis))
    return out


class _Runner:
    """Every model's traced graph run on a batch, the measured nodes' outputs captured. torch.fx:
    one graph per model; torch.export (Hugging Face models): the first model's graph, traced
    again for every new set of input shapes, run on each model's weights."""

    def __init__(self, models: list, example: Any, gm: Any, kind: str, points: dict, sizes: dict) -> None:
        self.models, self.kind, self.sizes = models, kind, sizes
        self.by_shape: dict = {}
        if kind == "fx":
            self.graphs = [gm] + [trace_groups(m, example)[1] for m in models[1:]]
            self.uses = _uses(points, sizes)
        else:  # the graph traced on the first batch serves every batch of its shapes
            args, kwargs = (((), dict(example)) if isinstance(example, dict) else (tuple(example), {}))
            self.by_shape[_shape_key(args, without_cache(models[0], args, kwargs))] = (gm, _uses(points, sizes))

    def run(self, args: tuple, kwargs: dict) -> tuple[list[dict], dict]:
        outs: list[dict] = []
        if self.kind == "fx":
            for model, gm in zip(self.models, self.graphs):
                got: dict = {}
                dev = device_of(model)
                _Capture(gm, set(self.uses), got.__setitem__).run(
                    *_fx_inputs(gm, to_device(args, dev), to_device(kwargs, dev)))
                outs.append(got)
            return outs, self.uses
        first = self.models[0]
        kw = without_cache(first, args, kwargs)
        key = _shape_key(args, kw)
        if key not in self.by_shape:
            _, gm, points, _, _ = trace_roles(first, dict(kwargs) if kwargs else tuple(args), capture=_MEASURE)
            self.by_shape[key] = (gm, _uses(points, self.sizes))
        gm, uses = self.by_shape[key]
        for model in self.models:
            got = {}
            dev = device_of(model)
            _Capture(gm, set(uses), got.__setitem__).run(
                *graph_inputs(gm, model, to_device(args, dev), to_device(kw, dev)))
            outs.append(got)
        return outs, uses


def _correlations(runner: _Runner, data: Iterable, progress: bool | None) -> dict[str, np.ndarray]:
    """Group (or axis of factors) -> correlation of the ``k n`` features of all models (float64),
    summed over the nodes that carry it."""
    stats: dict[str, list] = {}
    for batch in progress_bar(data, len(data), "zipit features", progress):
        args, kwargs = batch_args(batch)
        outs, wanted = runner.run(args, kwargs)
        for node, uses in wanted.items():
            for g, axis in uses:
                axes = axis if isinstance(axis, tuple) else (axis,)
                width = math.prod(outs[0][node].shape[a] for a in axes)
                feats = torch.cat([o[node].detach().movedim(axes, tuple(range(-len(axes), 0))).reshape(-1, width)
                                   .to("cpu", torch.float64) for o in outs], dim=1)
                st = stats.setdefault(g, [0, 0.0, 0.0])
                st[0] += feats.shape[0]
                st[1] = st[1] + feats.sum(0)
                st[2] = st[2] + feats.T @ feats
    out = {}
    for g, (count, s, ss) in stats.items():
        mean = s / count
        cov = (ss / count - torch.outer(mean, mean)).numpy()
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.outer(std, std)
        corr = np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
        # Constant features (a ReLU unit dead on all the data) have no correlation; two with the
        # same value are the same feature on this data, and merging them changes nothing there.
        m = mean.numpy()
        flat = np.flatnonzero(std <= 1e-12 * max(float(std.max()), 1.0))
        if flat.size:
            same = np.abs(m[flat, None] - m[None, flat]) <= 1e-9 * (1.0 + np.abs(m[flat, None]))
            corr[np.ix_(flat, flat)] = same.astype(np.float64)
        out[g] = corr
    return out


def _zipped_state(models: Sequence[nn.Module], spec: PermutationSpec, roles: dict,
                  merges: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Every entry of the merged state: ``sum_k merge_out^(k) W_k unmerge_in^(k)`` on the
    grouped axes (divided by ``k`` where no axis is an output of a group: the model's outputs
    are averaged); entries no group touches averaged; non-float entries from the first model.

    An entry with several output axes (an axis viewed as factors: heads and within-head units)
    merges the features of each joint cluster: a merged (head, within-head) unit is the mean of
    the features ``(model, head, unit)`` whose head and unit were zipped into it, so its weight
    is one over their number (not the product of the factors' means); a joint cluster no model
    has features in (one factor zipped inside model A, the other inside B) stays zero."""
    k = len(models)
    states = [{n: v.detach().to("cpu", torch.float64) if v.is_floating_point() else v
               for n, v in m.state_dict().items()} for m in models]
    axes_of = spec.axes_to_perm
    pieces_of: dict[str, list[str]] = {}
    for member, (real, *_) in spec.pieces.items():
        pieces_of.setdefault(real, []).append(member)
    first_state = models[0].state_dict()
    # Tied weights (GPT-2's embedding and output layer are one tensor) take one merged value,
    # that of the name the spec holds (an axis holding features first), whatever the order of the
    # state_dict's writes.
    tied: dict[int, list[str]] = {}
    for name, t in first_state.items():
        if t.numel():
            tied.setdefault(t.data_ptr(), []).append(name)
    rep = {}
    for names in tied.values():
        owner = next((n for n in names if any(roles.get((n, q), "out") == "out" for q in axes_of.get(n, {}))),
                     next((n for n in names if axes_of.get(n)), names[0]))
        rep.update({n: owner for n in names})
    out = {}
    for name, first in first_state.items():
        if rep.get(name, name) != name:
            continue
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        if name not in pieces_of:
            total = _merged_member(name, [spec.take(name, st) for st in states], spec, roles, merges)
        else:  # blocks of one parameter (a fused projection): each block merged as a member
            real, _, *shape = spec.pieces[pieces_of[name][0]]
            total = sum(st[name] for st in states) / k
            total = total.reshape(shape[0]) if shape else total.clone()
            for member in pieces_of[name]:
                index = [slice(None)] * total.dim()
                for axis, lo, hi in spec.pieces[member][1]:
                    index[axis] = slice(lo, hi)
                block = _merged_member(member, [spec.take(member, st) for st in states], spec, roles, merges)
                total[tuple(index)] = block.reshape(total[tuple(index)].shape)
        out[name] = total.reshape(first.shape).to(first.dtype).to(first.device)
    for name, owner in rep.items():
        out.setdefault(name, out[owner])
    return {name: out[name] for name in first_state}


def _merged_member(name: str, values: list, spec: PermutationSpec, roles: dict, merges: dict) -> torch.Tensor:
    """One member's merged value from its value in every model (float64, in its view)."""
    k = len(values)
    axes = spec.axes_to_perm.get(name, {})
    outs = [q for q in sorted(axes) if roles.get((name, q), "out") == "out"]
    shape = tuple(values[0].shape)
    total = torch.zeros(shape, dtype=torch.float64)
    count = torch.zeros([merges[axes[q]][0].shape[0] for q in outs], dtype=torch.float64)
    for j, y in enumerate(values):
        joint = torch.ones(())
        for q in sorted(axes):  # the output axes in order, as ``count``'s
            block = torch.from_numpy(_unmerge_block(axes[q], merges, j))  # (model j's units, merged)
            y = torch.movedim(torch.tensordot(block, y, dims=([0], [q])), 0, q)
            if q in outs:
                joint = joint[..., None] * block.sum(0)
        total += y
        count += joint
    if not outs:
        return total / k
    view = [1] * len(shape)
    for q, size in zip(outs, count.shape):
        view[q] = size
    return total / torch.where(count > 0, count, torch.ones(())).reshape(view)


def zipit(models: Sequence[nn.Module], data: Iterable, *, stop_at: str | None = None, alpha: float = 0.5,
          beta: float = 1.0, num_batches: int | None = None, reset_bn: bool = True,
          progress: bool | None = None) -> ZipResult:
    """Zips ``k`` models of one architecture into one (ZipIt!, Stoica et al. 2024), for models
    that may have learnt different features (different tasks or label sets).

    Features are correlated over ``data`` at the graph nodes that carry each group of the traced
    spec (in float64, streamed), then zipped greedily per group (see the module notes); layers,
    norms and their statistics, and residual streams are merged through the merge and unmerge
    matrices. Zipping a model with copies of itself (permuted or not) gives back its function.
    BatchNorm statistics are re-estimated on ``data`` afterwards (``reset_bn``).

    Args:
        models: Two or more models of one architecture, traceable by torch.fx.
        data: Batches: tensors or ``(inputs, targets)`` pairs.
        stop_at: Partial zipping: the name of a submodule (``"layer3"``, ``"4"``, or a
            Sequential's index, 4); the network is zipped up to its output, and each model keeps
            its own later layers, fed by the unmerged features (every value that crosses the cut must carry a group of the spec);
            the result averages the models' outputs. None: the whole network.
        alpha: The share of one model's features that may be merged inside that model (0: only
            across models, as a permutation would).
        beta: In (0, 1]: how readily a merged feature is merged again (its correlations with the
            others become the smaller of its parts', times ``beta``).
        num_batches: At most this many batches of ``data``.
        reset_bn: Re-estimate BatchNorm statistics of the result on ``data``.
        progress: A progress bar over the batches (default: when stderr is a terminal).

    Returns:
        A :class:`ZipResult`.

    Raises:
        RebasinError: fewer than two models, models of different architectures, a model torch.fx
            cannot trace (Hugging Face models, traced by torch.export, are not zipped yet), a
            group without an activation to measure, or bad options.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> data = [torch.randn(32, 4) for _ in range(2)]
        >>> out = rbt.zipit([a, a], data)
        >>> bool(torch.allclose(out.merged(data[0]), a(data[0]), atol=1e-5))
        True
    """
    models = list(models)
    if len(models) < 2:
        raise RebasinError(f"zipit needs at least two models, got {len(models)}")
    for j, m in enumerate(models):
        check_module(m, f"models[{j}]")
    if isinstance(stop_at, int) and not isinstance(stop_at, bool):
        stop_at = str(stop_at)  # a Sequential's layer by its index
    if stop_at is not None and not isinstance(stop_at, str):
        raise TypeError(f"stop_at must be a submodule's name (a string, e.g. 'layer3'), got {type(stop_at).__name__}")
    alpha, beta = float(alpha), float(beta)
    if not 0.0 <= alpha <= 1.0:
        raise RebasinError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 < beta <= 1.0:
        raise RebasinError(f"beta must be in (0, 1], got {beta}")
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    for j, s in enumerate(shapes[1:], 1):
        if s != shapes[0]:
            raise RebasinError(f"zipit: models[{j}] has other state_dict names or shapes than models[0]; the models "
                               "must share one architecture")
    data = list(batches(data, num_batches))
    if not data:
        raise RebasinError("zipit: data gave no batch")
    args, kwargs = batch_args(data[0])
    example = dict(kwargs) if kwargs else tuple(args)
    spec, gm, points, kind, roles = trace_roles(models[0], example, capture=_MEASURE)
    if kind != "fx" and stop_at is not None:
        raise RebasinError(f"zipit: partial zipping (stop_at) of {type(models[0]).__name__}, traced by torch.export "
                           "(Hugging Face models), is not supported yet; zip the whole model (stop_at=None)")
    if kwargs and stop_at is not None:
        raise RebasinError("zipit: partial zipping (stop_at) takes batches of positional inputs (tensors or "
                           "(inputs, targets)), not dicts of keyword inputs; pass the inputs as tensors")
    sizes = spec.validate(models[0].state_dict())
    k = len(models)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
        corr = _correlations(_Runner(models, example, gm, kind, points, sizes), data, progress)
    clusters, within = _zip_groups(corr, sizes, k, alpha, beta)
    merges = {g: _matrices(clusters[g], k * n) for g, n in sizes.items()}
    merged = copy.deepcopy(models[0])
    merged.load_state_dict(_zipped_state(models, spec, roles, merges))
    if stop_at is not None:
        merged = _Partial(merged, [copy.deepcopy(m) for m in models], example, stop_at, points, merges)
    if reset_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in merged.modules()):
        merged = reset_bn_stats(merged, data, inplace=True, progress=progress)
    return ZipResult(merged=merged.eval(), merges=merges, within=within, spec=spec)


def _unmerge_block(g: str | tuple, merges: dict, j: int) -> np.ndarray:
    """Model ``j``'s unmerge matrix of a group, or of an axis of factors (the Kronecker product
    of its factors' blocks, outermost first; a fixed factor the identity): ``(its units, the
    merged units)``."""
    if isinstance(g, str):
        unmerge = merges[g][1]
        n = unmerge.shape[1]
        return unmerge[j * n:(j + 1) * n]
    out = np.ones((1, 1))
    for h, size in g:
        out = np.kron(out, np.eye(size) if h is None else merges[h][1][j * size:(j + 1) * size])
    return out


class _Resume(torch.fx.Interpreter):
    """Runs a graph with the values of some nodes given (a model's layers after the cut, fed by
    the unmerged features), skipping the nodes before the cut that nothing after it reads."""

    def __init__(self, gm, given: dict, skip: set) -> None:
        super().__init__(gm)
        self.given, self.skip = given, skip

    def run_node(self, n):
        if n.name in self.given:
            return self.given[n.name]
        if n.name in self.skip:
            return None
        return super().run_node(n)


class _Stop(torch.fx.Interpreter):
    """Runs a graph up to (and including) the node ``last``, keeping the values of ``keep``."""

    def __init__(self, gm, last: str, keep: set) -> None:
        super().__init__(gm)
        self.last, self.keep, self.values = last, keep, {}

    def run(self, *args):
        self.args_iter = iter(args)
        for n in self.graph.nodes:
            value = self.run_node(n)
            self.env[n] = value
            if n.name in self.keep:
                self.values[n.name] = value
            if n.name == self.last:
                return self.values
        return self.values


class _Partial(nn.Module):
    """Partial zipping (``stop_at``): the zipped network up to the cut, then each model's own
    later layers on its unmerged features; the outputs averaged."""

    def __init__(self, zipped: nn.Module, models: list, example: tuple, stop_at: str, points: dict,
                 merges: dict) -> None:
        super().__init__()
        self.trunk = zipped
        self.heads = nn.ModuleList(models)
        self.graphs = [trace_groups(m, example)[1] for m in [zipped, *models]]
        nodes = list(self.graphs[0].graph.nodes)
        hits = [k for k, n in enumerate(nodes) if n.op == "call_module" and
                (n.target == stop_at or str(n.target).startswith(stop_at + "."))]
        if not hits:
            names = sorted({str(n.target).split(".")[0] for n in nodes if n.op == "call_module"})
            raise RebasinError(f"zipit: stop_at={stop_at!r} names no submodule the model calls; "
                               f"try one of {names[:12]}")
        cut = hits[-1]
        before = {n.name for n in nodes[:cut + 1]}
        self.last = nodes[cut].name
        at: dict[str, dict] = {}
        for g, pts in points.items():
            for node, axis, _ in pts:
                at.setdefault(node, {})[axis] = g
        self.crossing: dict[str, tuple] = {}
        for n in nodes[:cut + 1]:
            if n.op == "placeholder" or not any(u.name not in before for u in n.users):
                continue
            if n.name not in at:
                raise RebasinError(f"zipit: cannot stop at {stop_at!r}: the value of {n.name!r} crosses the cut "
                                   "without carrying a group's units as a whole axis; stop at another module")
            self.crossing[n.name] = [(axis, [torch.from_numpy(_unmerge_block(g, merges, j)) for j in range(len(models))])
                                     for axis, g in sorted(at[n.name].items())]
        self.skip = {n.name for n in nodes[:cut + 1] if n.op != "placeholder"} - set(self.crossing)
        self.k = len(models)

    def forward(self, *args):
        values = _Stop(self.graphs[0], self.last, set(self.crossing)).run(*args)
        outs = []
        for j, gm in enumerate(self.graphs[1:]):
            given = {}
            for name, axes in self.crossing.items():
                z = values[name]
                for axis, unmerge in axes:
                    block = unmerge[j].to(z.dtype).to(z.device)
                    z = torch.movedim(torch.tensordot(z.movedim(axis, -1), block, dims=([z.dim() - 1], [1])), -1, axis)
                given[name] = z
            outs.append(_Resume(gm, given, self.skip).run(*args))
        return sum(outs) / self.k


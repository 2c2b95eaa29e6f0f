"""The paper's data-driven alignment methods: activation matching and the straight-through
estimator (Git Re-Basin, section 3.1 and Algorithm 2)."""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from rebasin_rs._errors import RebasinError
from rebasin_rs._lap import solve_lap
from rebasin_rs._matching import MatchingResult, apply_permutation, weight_matching
from rebasin_rs._spec import PermutationSpec
from rebasin_rs.torch._apply import complete_perms, extract_weights, learnable_spec, permute_model, stored_weights
from rebasin_rs.torch._utils import batch_args, batches, device_of, eval_mode, progress_bar, to_device, without_cache
from rebasin_rs.torch.infer._infer import trace_groups
from rebasin_rs.torch.infer._trace import graph_inputs


class _Capture(torch.fx.Interpreter):
    """Runs a traced graph and hands the outputs of chosen nodes to a callback."""

    def __init__(self, gm, wanted: set[str], sink: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(gm)
        self.wanted, self.sink = wanted, sink

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.sink(n.name, out)
        return out


def _fx_inputs(gm, args: tuple, kwargs: dict) -> list:
    """The positional inputs of a torch.fx graph for a call ``(*args, **kwargs)``: the args, then
    each later placeholder's keyword value (or its default)."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"][len(args):]
    return [*args, *(kwargs.get(n.target, n.args[0] if n.args else None) for n in phs)]


def _shape_key(args: tuple, kwargs: dict) -> tuple:
    """What a torch.export graph is specialised to: the keyword names (in their order) and the
    shapes and dtypes of the inputs (other values by repr)."""
    return (tuple(kwargs), *((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t)
                             for t in tree_leaves((args, kwargs))))


_TIE = 1e-6


class _Graphs:
    """Both models' traced graphs, run on data batches. torch.fx: one graph per model, for any
    input shapes. torch.export (Hugging Face models): A's graph, traced again for every new set
    of input shapes (export specialises them) and run on either model's weights."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, example_inputs: Any, sizes: dict) -> None:
        self.models, self.sizes = (model_a, model_b), sizes
        _, gm_a, points, self.kind = trace_groups(model_a, example_inputs)
        self.by_shape: dict = {}
        if self.kind == "fx":
            self.fx = (gm_a, trace_groups(model_b, example_inputs)[1])
            self.node_groups = self._node_groups(points)

    def _node_groups(self, points: dict) -> dict[str, list]:
        """Node name -> [(group, unit axis, is a layer's output)] for the groups being matched."""
        out: dict[str, list] = {}
        for g, pts in points.items():
            # A factored axis (a tuple of (group, size)) is measured when one of its groups is.
            if g in self.sizes or (isinstance(g, tuple) and any(n in self.sizes for n, _ in g)):
                for node, axis, layer in pts:
                    out.setdefault(node, []).append((g, axis, layer))
        return out

    def run(self, which: int, args: tuple, kwargs: dict, sink: Callable) -> dict[str, list]:
        """Runs model ``which`` (0: A, 1: B) on one batch, handing every captured node's output to
        ``sink(name, tensor)``; returns that graph's node groups."""
        model = self.models[which]
        example = dict(kwargs) if kwargs else tuple(args)
        args = to_device(args, device_of(model))
        kwargs = without_cache(model, args, to_device(kwargs, device_of(model)))
        if self.kind == "fx":
            gm = self.fx[which]
            _Capture(gm, set(self.node_groups), sink).run(*_fx_inputs(gm, args, kwargs))
            return self.node_groups
        # The graph takes the inputs flattened in the traced order, specialised to their shapes.
        key = _shape_key(args, kwargs)
        if key not in self.by_shape:
            _, gm, points, _ = trace_groups(self.models[0], example)
            self.by_shape[key] = (gm, self._node_groups(points))
        gm, node_groups = self.by_shape[key]
        _Capture(gm, set(node_groups), sink).run(*graph_inputs(gm, model, args, kwargs))
        return node_groups


def _statistics(graphs: _Graphs, stats: dict, data: Iterable, num_batches: int | None,
                progress: bool | None) -> None:
    """Streams both models over the same batches, accumulating into ``stats[(group, layer)]`` the
    count, sums and cross-products (float64) of the activations at the graphs' capture nodes."""
    outs_a: dict[str, torch.Tensor] = {}
    node_groups: dict[str, list] = {}

    def accumulate(name, tb):
        ta = outs_a[name]
        for g, axis, layer in node_groups[name]:
            a = ta.detach().movedim(axis, -1).reshape(-1, ta.shape[axis]).to("cpu", torch.float64)
            b = tb.detach().movedim(axis, -1).reshape(-1, tb.shape[axis]).to("cpu", torch.float64)
            st = stats.setdefault((g, layer), {"n": 0, "sa": 0.0, "sb": 0.0, "sab": 0.0})
            st["n"] += a.shape[0]
            st["sa"] = st["sa"] + a.sum(0)
            st["sb"] = st["sb"] + b.sum(0)
            st["sab"] = st["sab"] + a.T @ b

    seen = 0
    model_a, model_b = graphs.models
    with eval_mode(model_a), eval_mode(model_b):
        for batch in progress_bar(batches(data, num_batches), num_batches, "activation statistics", progress):
            args, kwargs = batch_args(batch)
            outs_a.clear()
            node_groups.update(graphs.run(0, args, kwargs, outs_a.__setitem__))
            graphs.run(1, args, kwargs, accumulate)
            seen += 1
    if seen == 0:
        raise RebasinError("activation matching: data gave no batch")


def activation_matching(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, example_inputs: Any,
                        data: Iterable, *, num_batches: int | None = None, progress: bool | None = None,
                        **weight_options) -> MatchingResult:
    """Permutations of B's units that maximise the cross-covariance of the two models' activations.

    For every group, the activations carrying its units (a layer's outputs, and after its
    nonlinearity, residual adds and normalisations: every such graph node, per channel over batch
    and space for convolutions) are streamed through both models on the same batches; means and
    cross-products are accumulated in float64 (never storing the activations) and summed over the
    nodes a residual stream ties together. Each group is then one assignment in Rust. Groups with
    no such node (attention heads, within-head units) are matched by weights afterwards, with the
    others already applied. A batch is a tensor, an ``(inputs, targets, ...)`` pair or a dict of
    keyword inputs (``{"input_ids": ..., "attention_mask": ...}``).
    """
    sizes = spec.validate(model_a.state_dict(), model_b.state_dict())
    graphs = _Graphs(model_a, model_b, example_inputs, sizes)
    stats: dict = {}
    _statistics(graphs, stats, data, num_batches, progress)
    perms: dict[str, np.ndarray] = {}
    objective = 0.0
    covs: dict[str, Any] = {}
    for (g, layer), st in stats.items():
        n = st["n"]
        cov = st["sab"] / n - torch.outer(st["sa"] / n, st["sb"] / n)
        # Layers' outputs (before their nonlinearity) only break ties: units that a ReLU silences
        # on every input look alike after it. Weighted in, they made the MNIST-1D barrier worse.
        covs[g] = covs.get(g, 0.0) + (cov * _TIE if layer and any(k == (g, False) for k in stats) else cov)
    factored = {key: cov for key, cov in covs.items() if isinstance(key, tuple)}
    plain = {g: cov for g, cov in covs.items() if isinstance(g, str)}
    if factored:
        objective += _match_factored(factored, plain, sizes, perms, weight_options)
    for g, cov in plain.items():
        sol = solve_lap(cov.numpy(), maximize=True)
        perms[g] = sol.col_ind
        objective += float(sol.objective)
    sweeps = _match_rest(model_a, model_b, spec, sizes, perms, weight_options)
    return MatchingResult(perms=perms, objective=objective, sweeps=sweeps, history=[], orders=[])


def _match_factored(factored: dict, plain: dict, sizes: dict, perms: dict, weight_options: dict) -> float:
    """Groups met as factors of a measured axis (a grouped convolution's (groups, within-group)
    channels, attention's (heads, head_dim)): the permutations of all of them that maximise the
    summed cross-covariances, jointly, as one weight matching in Rust. The covariance ``C`` of an
    axis of factors ``(s1, ..., sk)`` is the product ``A B^T`` of ``A = C`` and ``B = I``, both
    viewed as ``(s1, ..., sk, m)``: the engine's cost for a factor is then the covariance summed
    over the other factors, as they are currently permuted. The plain measurements of those
    groups join as ``(n, n)`` members; they leave ``plain``. Fills ``perms``; returns the
    objective."""
    members: dict[str, list] = {}
    params_a: dict[str, np.ndarray] = {}
    views: dict[str, tuple] = {}
    for i, (key, cov) in enumerate(factored.items()):
        name = f"axis{i}"
        params_a[name] = cov.numpy()
        views[name] = tuple(size for _, size in key) + (cov.shape[0],)
        for k, (g, _) in enumerate(key):
            if g in sizes:
                members.setdefault(g, []).append((name, k))
    for g in set(members) & set(plain):
        params_a[g] = plain.pop(g).numpy()
        members[g].append((g, 0))
    spec = PermutationSpec({g: tuple(ms) for g, ms in members.items()}, views=views)
    params_b = {name: np.eye(x.shape[0]) for name, x in params_a.items()}
    options = {k: weight_options[k] for k in ("max_iter", "seed", "n_threads") if k in weight_options}
    res = weight_matching(spec, params_a, params_b, init="forward", **options)
    perms.update(res.perms)
    return float(res.objective)


def _match_rest(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, sizes: dict, perms: dict,
                weight_options: dict) -> int:
    """Heads and other groups without an activation of their own: weight matching, with the
    activation-matched groups applied to B first. Fills ``perms``; returns the sweeps run."""
    rest = [g for g in sizes if g not in perms]
    if not rest:
        return 0
    sweeps = 0
    partial = complete_perms(sizes, perms)
    b1 = permute_model(model_b, spec, partial)
    sub = learnable_spec(model_a, PermutationSpec({g: spec.groups[g] for g in rest}, views=spec.views,
                                                  pieces=spec.pieces))
    if sub.groups:
        names = sub.real_params()
        res = weight_matching(sub, stored_weights(model_a, names), stored_weights(b1, names), **weight_options)
        sweeps = res.sweeps
        for g in rest:
            p = res.perms.get(g, np.arange(sizes[g]))
            perms[g] = partial[g][p]  # compose: B's units moved by the activation step, then these
    for g in rest:
        perms.setdefault(g, np.arange(sizes[g]))
    return sweeps


def _default_loss(out: Any, target: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        out = out.logits
    return nn.functional.cross_entropy(out, target)


def ste(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, data: Iterable, *, epochs: int = 1,
        lr: float = 1e-3, loss_fn: Callable | None = None, progress: bool | None = None,
        **weight_options) -> tuple[MatchingResult, list[float]]:
    """Git Re-Basin's straight-through estimator (Algorithm 2).

    Learns weights W (initialised to A's) whose projection onto B's permutations, merged with A,
    has a low loss: at each step, the permutation is the weight matching of W to B (in Rust,
    warm-started from the previous step's permutations); the loss of ``(A + pi(B)) / 2`` is
    evaluated with the gradient passed straight through ``pi(B)`` to W; W takes an Adam step. The
    permutation with the lowest mean loss over an epoch is kept.

    Args:
        data: Batches ``(inputs, targets)``.
        epochs: Passes over ``data``.
        lr: Adam's learning rate.
        loss_fn: ``loss_fn(outputs, targets)``; cross-entropy by default.

    Returns:
        (the best result, the mean loss of each epoch). ``result.timings`` has the seconds spent
        in weight matching (``"matching"``) and in whole steps (``"step"``), and ``"steps"``.
    """
    loss_fn = loss_fn or _default_loss
    if weight_options.get("n_threads") is None:
        # torch's OpenMP workers keep spinning for a while after each forward/backward; threads of
        # our own beside them made each projection 5x slower (measured on 2 cores), so the
        # projection runs on the calling thread unless asked otherwise.
        weight_options["n_threads"] = 1
    params_a = dict(model_a.named_parameters())
    mspec = spec.restrict(set(params_a))
    names = mspec.real_params()
    sizes = spec.validate(model_a.state_dict(), model_b.state_dict())
    pb_np = extract_weights(model_b, names)
    params_b = {n: p.detach() for n, p in model_b.named_parameters()}
    w = {n: p.detach().clone().requires_grad_(True) for n, p in params_a.items()}
    opt = torch.optim.Adam(list(w.values()), lr=lr)
    buffers = {n: b.detach().clone() for n, b in model_a.named_buffers()}  # A's stay untouched
    perms: dict[str, np.ndarray] | None = None
    res_prev = None
    best, best_loss, history = None, float("inf"), []
    timing = {"matching": 0.0, "step": 0.0, "steps": 0}
    model = copy.deepcopy(model_a).train()
    for epoch in range(int(epochs)):
        total, count = 0.0, 0
        for batch in progress_bar(batches(data, None), None, f"STE epoch {epoch + 1}", progress):
            t0 = time.perf_counter()
            x, y = batch[0], batch[1]
            res = weight_matching(mspec, {n: w[n].detach().cpu().float().numpy() for n in names}, pb_np,
                                  init=perms if perms is not None else "forward", warm_start=res_prev,
                                  **weight_options)
            res_prev = res
            perms = res.perms
            timing["matching"] += time.perf_counter() - t0
            pb = apply_permutation(mspec, perms, params_b)
            merged = _straight_through(w, params_a, params_b, pb)
            out = torch.func.functional_call(model, {**merged, **buffers}, (x,))
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            timing["steps"] += 1
            timing["step"] += time.perf_counter() - t0
            total += float(loss.detach()) * len(x)
            count += len(x)
        mean = total / max(count, 1)
        history.append(mean)
        if mean < best_loss and perms is not None:
            best_loss, best = mean, dict(perms)
    if best is None:
        raise RebasinError("ste: data gave no batch")
    result = MatchingResult(perms=complete_perms(sizes, best), objective=float("nan"), sweeps=len(history),
                            history=history, orders=[], timings=timing)
    return result, history


def _straight_through(w: dict, params_a: dict, params_b: dict, pb: dict) -> dict:
    """``(A + pi(B)) / 2`` whose forward uses pi(B) and whose gradient flows to W."""
    merged = {}
    for n, wa in w.items():
        proj = wa + (pb[n].to(wa.dtype) - wa).detach() if n in pb else params_b[n]
        merged[n] = 0.5 * (params_a[n].detach() + proj)
    return merged


"""Merging PyTorch models: interpolation, curves and barriers, BatchNorm reset, REPAIR, MergeMany."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rebasin_rs._errors import RebasinError
from rebasin_rs._merge import _average, _unconverged, interpolate, loss_barrier
from rebasin_rs._cycle import pairwise
from rebasin_rs._merge import _merge_many as _merge_many_params
from rebasin_rs._spec import PermutationSpec
from rebasin_rs.torch._apply import complete_perms, extract_weights, learnable_spec, permute_model
from rebasin_rs.torch._utils import batches, check_module, device_of, forward, progress_bar
from rebasin_rs.torch.infer._infer import infer_spec

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def merge(model_a: nn.Module, model_b: nn.Module, alpha: float = 0.5) -> nn.Module:
    """A new model with ``(1 - alpha) * A + alpha * B`` for every floating parameter and buffer
    (BatchNorm running statistics included; integer counters are A's). Align B to A first
    (:func:`align`) for a merge that works; re-estimate BatchNorm statistics after
    (:func:`reset_bn_stats`).

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> m = rbt.merge(a, b, 0.5)
        >>> bool(torch.allclose(m.weight, (a.weight + b.weight) / 2))
        True
    """
    check_module(model_a, "model_a")
    check_module(model_b, "model_b")
    merged = copy.deepcopy(model_a)
    sd = interpolate(model_a.state_dict(), model_b.state_dict(), alpha)
    merged.load_state_dict(sd)
    return merged


@dataclass(frozen=True)
class InterpolationCurve:
    """Metrics along the line from model A (alpha 0) to model B (alpha 1).

    Attributes:
        alphas: The interpolation weights, increasing from 0 to 1.
        metrics: Metric name -> value at each alpha.
        barriers: Metric name -> barrier (:func:`rebasin_rs.loss_barrier`; metrics whose name
            starts with ``acc`` count as higher-is-better).
    """

    alphas: list[float]
    metrics: dict[str, list[float]]
    barriers: dict[str, float] = field(default_factory=dict)


def interpolation_curve(model_a: nn.Module, model_b: nn.Module, evaluate: Callable[[nn.Module], Any], *,
                        alphas: Sequence[float] | int = 11, progress: bool | None = None) -> InterpolationCurve:
    """Evaluates the interpolated models ``(1 - alpha) A + alpha B`` and the barrier of each metric.

    Args:
        model_a: One end point (not modified).
        model_b: The other, of A's architecture (aligned to A, or not for the naive curve; not
            modified).
        evaluate: Called with each interpolated model (in eval mode); returns a float (recorded
            as ``"loss"``) or a dict of floats, e.g. ``{"loss": ..., "acc": ...}``.
        alphas: The alphas (must start at 0 and end at 1), or their number, evenly spaced.
        progress: A progress bar (default: when stderr is a terminal).

    Returns:
        An :class:`InterpolationCurve`.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> a, b = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        >>> _ = a.weight.data.fill_(1.0), b.weight.data.fill_(-1.0)
        >>> curve = rbt.interpolation_curve(a, b, lambda m: (float(m.weight) ** 2 - 1) ** 2, alphas=3)
        >>> curve.metrics["loss"], curve.barriers["loss"]
        ([0.0, 1.0, 0.0], 1.0)
    """
    check_module(model_a, "model_a")
    check_module(model_b, "model_b")
    if isinstance(alphas, int):
        if alphas < 2:
            raise RebasinError(f"alphas: need at least 2 points, got {alphas}")
        alphas = np.linspace(0.0, 1.0, alphas).tolist()
    alphas = [float(a) for a in alphas]
    if len(alphas) < 2 or alphas[0] != 0.0 or alphas[-1] != 1.0 or any(y <= x for x, y in zip(alphas, alphas[1:])):
        raise RebasinError("alphas must increase from 0.0 to 1.0 (the barrier needs both endpoints)")
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    work = copy.deepcopy(model_a)
    flags = [(m, m.training) for m in work.modules()]
    metrics: dict[str, list[float]] = {}
    for alpha in progress_bar(alphas, len(alphas), "interpolating", progress):
        work.load_state_dict(interpolate(sd_a, sd_b, alpha))
        work.eval()
        with torch.no_grad():
            out = evaluate(work)
        if not isinstance(out, Mapping):
            out = {"loss": out}
        for k, v in out.items():
            metrics.setdefault(k, []).append(float(v))
    for m, t in flags:
        m.training = t
    barriers = {k: loss_barrier(v, higher_is_better=k.lower().startswith("acc")) for k, v in metrics.items()}
    return InterpolationCurve(alphas=alphas, metrics=metrics, barriers=barriers)


def plot_curves(curves: Mapping[str, InterpolationCurve], path: Any, *, title: str | None = None) -> str:
    """Draws curves (e.g. ``{"naive": c1, "weight matching": c2}``) into a PNG, one panel per
    metric, the barrier in each legend (three decimals). Written atomically; returns the path."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from rebasin_rs._io import atomic_write, check_output_path

    path = check_output_path(path)
    if not curves:
        raise RebasinError("plot_curves: no curves to draw")
    names = list(dict.fromkeys(k for c in curves.values() for k in c.metrics))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], names):
        for label, c in curves.items():
            if metric in c.metrics:
                ax.plot(c.alphas, c.metrics[metric], marker="o", ms=3,
                        label=f"{label} (barrier {c.barriers.get(metric, float('nan')):.3f})")
        ax.set_xlabel("alpha (0 = model A, 1 = model B)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def reset_bn_stats(model: nn.Module, loader: Iterable, num_batches: int | None = None, *,
                   inplace: bool = False, progress: bool | None = None) -> nn.Module:
    """Re-estimates every BatchNorm's running mean and variance over ``loader`` (a cumulative
    average, as after training): after merging, the statistics of A and B do not describe the
    merged model's activations (the variance collapse the paper corrects).

    Args:
        model: The model (left untouched unless ``inplace=True``).
        loader: Batches: tensors, ``(inputs, targets)`` pairs (the first is used) or dicts of
            keyword inputs.
        num_batches: At most this many batches (default: the whole loader).
        inplace: Update ``model`` itself.
        progress: A progress bar (default: when stderr is a terminal).

    Returns:
        The model with new statistics (in its original training/eval modes).

    Raises:
        ValueError: the loader gave no batch.
    """
    check_module(model, "model")
    model = model if inplace else copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not bns:
        warnings.warn("reset_bn_stats: the model has no BatchNorm with running statistics", stacklevel=2)
        return model
    flags = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    device = device_of(model)
    seen = 0
    try:
        with torch.no_grad():
            for batch in progress_bar(batches(loader, num_batches), num_batches, "BatchNorm statistics", progress):
                forward(model, batch, device)
                seen += 1
    finally:
        for m, mom in momenta:
            m.momentum = mom
        for m, t in flags:
            m.training = t
    if seen == 0:
        raise RebasinError("reset_bn_stats: the loader gave no batch")
    return model


class _Stats:
    """Streaming per-channel mean and variance (float64)."""

    def __init__(self, dim: int) -> None:
        self.dim, self.n, self.s, self.s2 = dim, 0, None, None

    def add(self, out: torch.Tensor) -> None:
        x = out.detach().double().movedim(self.dim, -1)
        x = x.reshape(-1, x.shape[-1])
        s, s2 = x.sum(0), (x * x).sum(0)
        self.s = s if self.s is None else self.s + s
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += x.shape[0]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s / self.n
        return mean, (self.s2 / self.n - mean * mean).clamp_min(0.0)


def _repair_points(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, channel dim) where REPAIR corrects statistics: every BatchNorm, and every
    Linear/convolution with a bias whose output is not fed straight into a normalisation or out
    of the model."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    skip: set[str] = set()
    try:
        gm = torch.fx.symbolic_trace(model)
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            users = list(node.users)
            to_norm = users and all(u.op == "call_module" and isinstance(gm.get_submodule(str(u.target)), norm_types)
                                    for u in users)
            to_output = any(u.op == "output" for u in users)
            if to_norm or to_output:
                skip.add(str(node.target))
    except Exception:  # noqa: BLE001 - untraceable: only the last layer is known to be the output
        layers = [n for n, m in model.named_modules() if isinstance(m, layer_types)]
        skip.update(layers[-1:])
    points = []
    for name, m in model.named_modules():
        if name in skip:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            points.append((name, 1))
        elif isinstance(m, layer_types) and m.bias is not None:
            points.append((name, -1 if isinstance(m, nn.Linear) else 1))
    return points


def _collect(model: nn.Module, points, loader, num_batches, progress, desc) -> dict[str, _Stats]:
    stats = {name: _Stats(dim) for name, dim in points}
    mods = dict(model.named_modules())
    hooks = [mods[name].register_forward_hook(lambda m, i, o, s=stats[name]: s.add(o)) for name, _ in points]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    device = device_of(model)
    seen = 0
    try:
        with torch.no_grad():
            for batch in progress_bar(batches(loader, num_batches), num_batches, desc, progress):
                forward(model, batch, device)
                seen += 1
    finally:
        for h in hooks:
            h.remove()
        for m, t in flags:
            m.training = t
    if seen == 0:
        raise RebasinError("repair: the loader gave no batch")
    return stats


def repair(model_a: nn.Module, model_b: nn.Module, merged: nn.Module, loader: Iterable, *, alpha: float = 0.5,
           num_batches: int | None = None, eps: float = 1e-5, inplace: bool = False,
           progress: bool | None = None) -> nn.Module:
    """REPAIR (Jordan et al. 2022, "REPAIR: REnormalizing Permuted Activations for Interpolation
    Repair"): the merged model's per-channel mean and standard deviation, at every hidden layer,
    are corrected to the interpolation of A's and B's: ``(1 - alpha) * stat_A + alpha * stat_B``.

    The statistics are measured over ``loader`` with forward hooks; the merged model's are
    measured in one pass with every correction applied as it goes (each layer normalised by its
    batch statistics, as BatchNorm does in training), then folded into the layer's weights:
    a BatchNorm's weight and bias, or a Linear/convolution's weight rows and bias. Layers that
    feed a normalisation directly, and the model's output layer, are left alone; a BatchNorm
    network's running statistics are re-estimated in the same pass.

    Args:
        model_a: One end point.
        model_b: The other (aligned to A).
        merged: Their interpolation at ``alpha`` (e.g. :func:`merge`). Left untouched unless
            ``inplace=True``.
        loader: Batches as for :func:`reset_bn_stats`.
        alpha: The interpolation weight of ``merged``.
        num_batches: At most this many batches per pass (three passes: A, B, merged).
        eps: Added to variances.
        inplace: Modify ``merged`` itself.
        progress: Progress bars (default: when stderr is a terminal).

    Returns:
        The repaired model.
    """
    for m, label in ((model_a, "model_a"), (model_b, "model_b"), (merged, "merged")):
        check_module(m, label)
    merged = merged if inplace else copy.deepcopy(merged)
    points = _repair_points(merged)
    if not points:
        warnings.warn("repair: no layer to correct (no BatchNorm, and no Linear/convolution with a bias "
                      "between hidden layers)", stacklevel=2)
        return merged
    sa = _collect(model_a, points, loader, num_batches, progress, "REPAIR: statistics of A")
    sb = _collect(model_b, points, loader, num_batches, progress, "REPAIR: statistics of B")
    mods = dict(merged.named_modules())
    targets = {}
    for name, _ in points:
        (ma, va), (mb, vb) = sa[name].mean_var(), sb[name].mean_var()
        targets[name] = ((1 - alpha) * ma + alpha * mb, (1 - alpha) * va.sqrt() + alpha * vb.sqrt())
    sm = {name: _Stats(dim) for name, dim in points}

    def correct(name, dim):
        def hook(m, i, out):
            sm[name].add(out)
            x = out.movedim(dim, -1)
            flat = x.reshape(-1, x.shape[-1]).double()
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            mt, st = targets[name]
            y = (x.double() - mean) / (var + eps).sqrt() * st.to(x.device) + mt.to(x.device)
            return y.to(out.dtype).movedim(-1, dim)
        return hook

    hooks = [mods[name].register_forward_hook(correct(name, dim)) for name, dim in points]
    try:
        if any(isinstance(m, _NORMS) and m.track_running_stats for m in merged.modules()):
            # BatchNorm statistics are re-estimated in the same pass, on corrected inputs.
            reset_bn_stats(merged, loader, num_batches, inplace=True, progress=progress)
        else:
            _collect(merged, [], loader, num_batches, progress, "REPAIR: merged")
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for name, _ in points:
            m = mods[name]
            mean, var = sm[name].mean_var()
            mt, st = targets[name]
            g = st / (var + eps).sqrt()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                w, b = m.weight, m.bias
                b.copy_(((b.double() - mean.to(b.device)) * g.to(b.device) + mt.to(b.device)).to(b.dtype))
                w.copy_((w.double() * g.to(w.device)).to(w.dtype))
            else:
                w, b = m.weight, m.bias
                shape = (-1,) + (1,) * (w.dim() - 1)
                w.copy_((w.double() * g.to(w.device).view(shape)).to(w.dtype))
                b.copy_(((b.double() - mean.to(b.device)) * g.to(b.device) + mt.to(b.device)).to(b.dtype))
    return merged


@dataclass(frozen=True)
class MergeManyModels:
    """What :func:`merge_many` returns: the merged model, each input's permutations, and how the
    rounds went (as :class:`rebasin_rs.MergeManyResult`)."""

    merged: nn.Module
    perms: list[dict[str, np.ndarray]]
    rounds: int
    objective: float = float("nan")
    history: list[float] = field(default_factory=list)
    converged: bool = True

    def pairwise(self, i: int, j: int) -> dict[str, np.ndarray]:
        """The permutations aligning model ``i`` onto model ``j`` through the shared frame
        (``permute_model(models[i], spec, out.pairwise(i, j))`` is model ``i`` in ``j``'s unit
        order); maps through one frame are cycle-consistent."""
        return pairwise(self.perms, i, j)


def merge_many(models: Sequence[nn.Module], example_inputs: Any = None, *, spec: PermutationSpec | None = None,
               method: str = "mergemany", max_rounds: int = 100, tol: float = 1e-3, seed: int = 0,
               n_threads: int | None = None, progress: bool | None = None) -> MergeManyModels:
    """MergeMany (Git Re-Basin, Algorithm 3) on modules: aligns every model to the mean of the
    others, round after round, then averages them (learnable parameters matched; buffers permuted
    and averaged). Re-estimate BatchNorm statistics afterwards (:func:`reset_bn_stats`). The inputs
    are not modified. The rounds, the stopping rule (``tol``, ``max_rounds`` with a warning) and
    the objective are those of :func:`rebasin_rs.merge_many`.

    Args:
        models: Two or more models of one architecture.
        example_inputs: An input the models accept, to infer the spec (or pass ``spec=``).
        spec: The permutation spec (default: :func:`infer_spec` of the first model).
        method: As for :func:`rebasin_rs.merge_many` (``"frank-wolfe"``: C2M3's cycle-consistent
            optimiser).
        max_rounds: As for :func:`rebasin_rs.merge_many`.
        tol: As for :func:`rebasin_rs.merge_many`.
        seed: As for :func:`rebasin_rs.merge_many`.
        n_threads: As for :func:`rebasin_rs.merge_many`.
        progress: A progress bar over the rounds (default: when stderr is a terminal).

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> nets = [torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        ...         for _ in range(3)]
        >>> out = rbt.merge_many(nets, torch.randn(1, 3))
        >>> type(out.merged).__name__, len(out.perms), out.converged
        ('Sequential', 3, True)
    """
    models = list(models)
    if len(models) < 2:
        raise RebasinError(f"merge_many needs at least two models, got {len(models)}")
    for k, m in enumerate(models):
        check_module(m, f"models[{k}]")
    if spec is None:
        if example_inputs is None:
            raise RebasinError("merge_many: pass example_inputs (to infer the spec) or spec=")
        spec = infer_spec(models[0], example_inputs)
    sizes = spec.validate(models[0].state_dict())
    mspec = learnable_spec(models[0], spec)
    names = mspec.real_params()
    res = _merge_many_params(mspec, [extract_weights(m, names) for m in models], max_rounds=max_rounds, tol=tol,
                             seed=seed, n_threads=n_threads, progress=progress, method=method)
    if not res.converged:
        warnings.warn(_unconverged(res, max_rounds, tol), RuntimeWarning, stacklevel=2)
    perms = [complete_perms(sizes, p) for p in res.perms]
    aligned = [permute_model(m, spec, p) for m, p in zip(models, perms)]  # new models: inputs untouched
    merged = aligned[0]
    merged.load_state_dict(_average([m.state_dict() for m in aligned]))
    return MergeManyModels(merged=merged, perms=perms, rounds=res.rounds, objective=res.history[-1],
                           history=list(res.history), converged=res.converged)

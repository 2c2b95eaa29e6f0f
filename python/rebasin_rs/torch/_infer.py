"""Permutation specs inferred from a traced graph.

Every axis of every tensor in the graph is described by *segments* of *factors*: an axis of a
Linear's output is one segment holding one unit variable; the input axis of a layer after
``torch.cat`` holds one segment per concatenated tensor; the axis that ``flatten`` makes out of a
``(C, H, W)`` map is one segment with the factors ``C, H, W`` (row-major). Each operation ties
variables together (union-find): a residual add ties the units of its operands, a Linear ties its
weight's input axis to its input's last axis. A variable that reaches the model's inputs or
outputs, or an operation this module does not understand, is *fixed*: never permuted. Every class
of variables that is not fixed and touches a parameter becomes one permutation group; a class
permuted consistently on every tensor that carries it leaves the function unchanged, because
every rule below is equivariant.

The rules are keyed by operation name and read arguments by name or position, so torch.fx graphs
(modules, functionals, methods) and torch.export graphs (ATen operators) share them.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from rebasin_rs._spec import PermutationSpec

Seg = tuple  # of variable ids (factors, row-major); () is a segment of size 1
Axis = tuple  # of segments

# Reasons a variable is fixed that are not a shortcoming: they are not hidden units at all.
_INPUT, _OUTPUT, _SPATIAL = "model input", "model output", "spatial"
_BENIGN = {_INPUT, _OUTPUT, _SPATIAL}
_MAX_PASSES = 12


class _Vars:
    """Union-find over unit variables; a class may be fixed, with the reasons why."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.why: list[set[str]] = []

    def new(self, size: int, why: str | None = None) -> int:
        v = len(self.parent)
        self.parent.append(v)
        self.size.append(int(size))
        self.why.append({why} if why else set())
        return v

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.why[ra] |= self.why[rb]

    def fix(self, v: int, why: str) -> None:
        self.why[self.find(v)].add(why)

    def fixed(self, v: int) -> bool:
        return bool(self.why[self.find(v)])


@dataclass
class _T:
    """Abstract tensor: one :data:`Axis` per dimension."""

    axes: list


@dataclass
class _P:
    """A parameter or buffer read by the graph, bound to axes at its first use."""

    name: str
    shape: tuple


@dataclass
class Coverage:
    """How much of a model's hidden units a spec inferred by :func:`infer_spec` permutes.

    Attributes:
        permuted: Hidden units that some permutation group moves.
        hidden: Output units of every Linear, convolution and Embedding that are not the model's
            outputs (depthwise convolutions keep their input's units and are not counted twice).
        share: ``permuted / hidden`` (1.0 when there are no hidden units).
        unpermuted: Why the other hidden units stay fixed: reason -> number of units.
        by_kind: ``{"units": (permuted, hidden), "heads": ..., "within-head": ...}``: an output
            axis that attention splits into (heads, head_dim) counts its heads and its within-head
            positions separately (a projection of 12 heads of 64 counts 12 heads and 64
            within-head units); every other axis counts its units.
    """

    permuted: int
    hidden: int
    share: float
    unpermuted: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)


class _Graph:
    """Runs the rules over one graph and collects the bound parameters' axes."""

    def __init__(self, state_names: set[str], plan: dict | None = None) -> None:
        self.v = _Vars()
        self.bound: dict[str, list] = {}
        self.state_names = state_names
        self.producers: list[tuple[Axis, str]] = []
        # Refinement (see _run): unit variables that a later operation splits (attention heads
        # out of a projection, q/k/v out of a fused one) are created already split on the next
        # pass. `plan`: creation key -> ("prod", factor sizes) or ("sum", segment sizes).
        self.plan = plan or {}
        self.key_of: dict[int, tuple] = {}
        self.requests: dict[int, tuple] = {}
        self.node = -1
        self.node_ops: dict[str, Any] = {}  # node name -> the rule's operation name
        self.env: dict[str, Any] = {}  # node name -> abstract value (last pass)
        self.group_roots: dict[str, int] = {}

    # -- axes -------------------------------------------------------------------------------
    def axis(self, size: int, why: str | None = None, key: Any = None) -> Axis:
        """A fresh axis of ``size``; ``key`` names the unit variable it creates (a layer's outputs,
        a parameter's axis) so that a later pass can create it split."""
        if size == 1:
            return ((),)
        if key is None or why is not None:
            return ((self.v.new(size, why),),)
        made = self._make((self.node, key) if not (isinstance(key, tuple) and key[0] == "param") else key, size)
        if made is None:
            return ((self.v.new(size, "a split of units that cannot be expressed"),),)
        return made

    def _make(self, key: tuple, size: int) -> Axis | None:
        plan = self.plan.get(key)
        if plan is None:
            return ((self._leaf(key, size),),)
        kind, parts = plan
        subs = []
        for i, size_i in enumerate(parts):
            sub = self._make(key + (i,), size_i) if size_i != 1 else ((),)
            if sub is None or (kind == "prod" and i > 0 and len(sub) != 1):
                # A product's later factor cannot be a sum (its pieces would interleave): it stays
                # whole, and the operation that wanted it cut fixes it instead (rotary embeddings
                # cutting each head in halves).
                sub = ((self._leaf(key + (i,), size_i),),)
            subs.append(sub)
        if kind == "sum":
            return tuple(seg for sub in subs for seg in sub)
        rest = tuple(f for sub in subs[1:] for f in sub[0])
        return tuple(seg + rest for seg in subs[0])

    def _leaf(self, key: tuple, size: int) -> int:
        v = self.v.new(size)
        self.key_of[v] = key
        return v

    def request(self, v: int, plan: tuple) -> bool:
        """Asks for unit variable ``v``'s class to be created split by ``plan`` on the next pass.
        False when it cannot be (fixed already, or asked to split two ways)."""
        r = self.v.find(v)
        if self.v.why[r]:
            return False
        old = self.requests.get(r)
        if old is not None and old != plan:
            return False
        self.requests[r] = plan
        return True

    def next_plan(self) -> dict:
        """The plan of the next pass: every variable of a class asked to split, split."""
        plan = dict(self.plan)
        for v, key in self.key_of.items():
            req = self.requests.get(self.v.find(v))
            if req is not None and key not in plan:
                plan[key] = req
        return plan

    def size(self, ax: Axis) -> int:
        return sum(math.prod(self.v.size[f] for f in seg) for seg in ax)

    def vars_of(self, ax: Axis) -> list[int]:
        return [f for seg in ax for f in seg]

    def fix_axes(self, axes, why: str) -> None:
        for ax in axes:
            for f in self.vars_of(ax):
                self.v.fix(f, why)

    def fix_value(self, x: Any, why: str) -> None:
        if isinstance(x, _P):
            x = self.as_t(x)
        if isinstance(x, _T):
            self.fix_axes(x.axes, why)
        elif isinstance(x, (list, tuple)):
            for y in x:
                self.fix_value(y, why)
        elif isinstance(x, dict):
            for y in x.values():
                self.fix_value(y, why)

    def unify(self, a: Axis, b: Axis, where: str) -> Axis:
        shape_a = [tuple(self.v.size[f] for f in seg) for seg in a]
        shape_b = [tuple(self.v.size[f] for f in seg) for seg in b]
        if shape_a == shape_b:
            for sa, sb in zip(a, b):
                for fa, fb in zip(sa, sb):
                    self.v.union(fa, fb)
            return a
        # Same size laid out differently. When one side is a single unit variable, the next pass
        # creates it split like the other side (a projection whose output is later viewed as
        # heads); otherwise keep both fixed rather than guess.
        for one, other, shape in ((a, b, shape_b), (b, a, shape_a)):
            if len(one) == 1 and len(one[0]) == 1 and self.size(one) == self.size(other):
                if len(other) == 1:
                    plan = ("prod", tuple(shape[0]))
                elif all(len(seg) <= 1 for seg in other):
                    plan = ("sum", tuple(self.size((seg,)) for seg in other))
                else:
                    continue
                if self.request(one[0][0], plan):
                    break
        why = "operands whose units are laid out differently"
        self.fix_axes([a, b], why)
        return a

    # -- parameters -------------------------------------------------------------------------
    def bind(self, p: Any, axes: list, where: str) -> None:
        """Ties parameter ``p``'s axes to ``axes`` (its layout at this use)."""
        if p is None:
            return
        if isinstance(p, _T):
            if len(p.axes) == len(axes):
                for a, b in zip(p.axes, axes):
                    self.unify(a, b, where)
            else:
                self.fix_axes(p.axes + list(axes), "a weight of unexpected rank")
            return
        if not isinstance(p, _P):
            return
        if len(p.shape) != len(axes) or tuple(self.size(a) for a in axes) != tuple(p.shape):
            self.fix_axes(axes, "a weight of unexpected shape")
            axes = [self.axis(d) for d in p.shape]
            self.fix_axes(axes, "a weight of unexpected shape")
        old = self.bound.get(p.name)
        if old is None:
            self.bound[p.name] = list(axes)
        else:
            for a, b in zip(old, axes):
                self.unify(a, b, where)

    def as_t(self, x: Any) -> Any:
        if isinstance(x, _P):
            if x.name not in self.bound:
                self.bound[x.name] = [self.axis(d, key=("param", x.name, k)) for k, d in enumerate(x.shape)]
            return _T(list(self.bound[x.name]))
        return x

    # -- result -----------------------------------------------------------------------------
    def spec(self) -> tuple[PermutationSpec, Coverage]:
        v = self.v
        for name, axes in self.bound.items():
            if name not in self.state_names:
                # Not in state_dict (a plain attribute or a non-persistent buffer): permute_model
                # could not write it back, so its units stay where they are.
                self.fix_axes(axes, f"tensor {name!r} is not in the state_dict")
        groups: dict[int, list[tuple[str, int]]] = {}
        views: dict[str, tuple[int, ...]] = {}
        pieces: dict[str, tuple[str, tuple]] = {}
        for name, axes in self.bound.items():
            seg_axes = [k for k, ax in enumerate(axes) if len(ax) > 1]
            starts = {k: list(itertools.accumulate([0] + [self.size((seg,)) for seg in axes[k]])) for k in seg_axes}
            for combo in itertools.product(*[range(len(axes[k])) for k in seg_axes]):
                choice = dict(zip(seg_axes, combo))
                member = name
                if seg_axes:
                    last = max(seg_axes)
                    idx = [":"] * (last + 1)
                    slices = []
                    for k, s in choice.items():
                        lo, hi = starts[k][s], starts[k][s + 1]
                        idx[k] = f"{lo}:{hi}"
                        slices.append((k, lo, hi))
                    member = f"{name}[{', '.join(idx)}]"
                view: list[int] = []
                members = []
                natural = []
                for k, ax in enumerate(axes):
                    seg = ax[choice.get(k, 0)] if ax else ()
                    natural.append(self.size((seg,)))
                    if not seg:
                        view.append(1)
                        continue
                    for f in seg:
                        r = v.find(f)
                        if not v.why[r] and v.size[r] >= 2:
                            members.append((r, len(view)))
                        view.append(v.size[f])
                if not members:
                    continue
                if seg_axes:
                    pieces[member] = (name, tuple(slices))
                if view != natural:
                    views[member] = tuple(view)
                for r, q in members:
                    groups.setdefault(r, []).append((member, q))
        names: dict[int, str] = {}
        taken: set[str] = set()
        for r, ms in groups.items():
            base = ms[0][0].split("[")[0]
            base = "P_" + (base.rsplit(".", 1)[0] if "." in base else base)
            name, k = base, 1
            while name in taken:
                k += 1
                name = f"{base}#{k}"
            taken.add(name)
            names[r] = name
        self.group_roots = {name: r for r, name in names.items()}
        used = {m for ms in groups.values() for m, _ in ms}
        spec = PermutationSpec(
            {names[r]: tuple(ms) for r, ms in groups.items()},
            views={k: val for k, val in views.items() if k in used},
            pieces={k: val for k, val in pieces.items() if k in used},
        )
        # Coverage over the producers' units.
        hidden = permuted = 0
        unpermuted: dict[str, int] = {}
        seen: set[int] = set()
        kinds: dict[str, list[int]] = {}
        for ax, _ in self.producers:
            for seg in ax:
                for pos, f in enumerate(seg):
                    r = v.find(f)
                    if f in seen:
                        continue
                    seen.add(f)
                    if v.why[r] & {_INPUT, _OUTPUT}:
                        continue
                    kind = "units" if len(seg) == 1 else "within-head" if pos == len(seg) - 1 else "heads"
                    tally = kinds.setdefault(kind, [0, 0])
                    hidden += v.size[f]
                    tally[1] += v.size[f]
                    if r in groups:
                        permuted += v.size[f]
                        tally[0] += v.size[f]
                    else:
                        why = "; ".join(sorted(v.why[r] - _BENIGN)) or "no parameter to permute"
                        unpermuted[why] = unpermuted.get(why, 0) + v.size[f]
        cov = Coverage(permuted, hidden, permuted / hidden if hidden else 1.0, unpermuted,
                       {k: (t[0], t[1]) for k, t in kinds.items()})
        return spec, cov


# ---------------------------------------------------------------------------------------------
# Rules. Each takes the graph, an argument accessor and the output shape(s), returns the value.


class _Args:
    """Arguments of one call, by name (ATen schema, keyword) or by position (functionals)."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args, self.kwargs = args, kwargs

    def get(self, name: str, pos: int | None = None, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        if pos is not None and pos < len(self.args):
            return self.args[pos]
        return default

    def values(self) -> list:
        return list(self.args) + list(self.kwargs.values())


_UNARY = set(
    """relu relu_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardswish_ hardsigmoid
    hardsigmoid_ hardtanh hardtanh_ relu6 leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_ softplus
    mish mish_ logsigmoid softsign tanhshrink dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
    feature_alpha_dropout stochastic_depth contiguous clone detach float half bfloat16 double to type
    type_as neg abs exp log sqrt rsqrt square sin cos erf sign clamp clamp_ clip clamp_min clamp_max
    softmax log_softmax _softmax _log_softmax identity native_dropout alias lift_fresh_copy
    _to_copy requires_grad_""".split()
)
_BINARY = set(
    """add add_ sub sub_ mul mul_ div div_ truediv true_divide iadd isub imul itruediv rsub maximum
    minimum where pow pow_ addcmul lerp""".split()
)
_CAST = set("""to type type_as float half bfloat16 double contiguous clone detach _to_copy alias lift_fresh_copy
    requires_grad_ dropout dropout_ native_dropout alpha_dropout feature_alpha_dropout stochastic_depth
    dropout1d dropout2d dropout3d""".split())
_REDUCE = set("mean sum amax amin prod std var logsumexp norm nansum nanmean".split())
_SHAPE_ONLY = set("""size dim numel shape dtype device is_floating_point is_contiguous ndim _assert_tensor_metadata
    _assert_async _assert_scalar sym_size sym_numel sym_stride sym_constrain_range
    sym_constrain_range_for_size""".split())


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _elementwise(g: _Graph, operands: list, out_shape: tuple, where: str) -> _T:
    """Broadcasting elementwise op: axes aligned from the right are tied where both are > 1."""
    nd = len(out_shape)
    out: list = [None] * nd
    for x in operands:
        x = g.as_t(x)
        if not isinstance(x, _T):
            continue
        off = nd - len(x.axes)
        for k, ax in enumerate(x.axes):
            if g.size(ax) == 1 and out_shape[off + k] != 1:
                continue
            out[off + k] = ax if out[off + k] is None else g.unify(out[off + k], ax, where)
    for k in range(nd):
        if out[k] is None:
            # Broadcast from size 1 on every operand: equal values along the axis, free.
            out[k] = g.axis(out_shape[k], key=("broadcast", k))
    return _T(out)


def _reshape(g: _Graph, x: _T, out_shape: tuple, where: str) -> _T:
    in_shape = [g.size(ax) for ax in x.axes]
    if math.prod(in_shape) != math.prod(out_shape):
        g.fix_axes(x.axes, "a reshape that changes the size")
        return _T([g.axis(d, where) for d in out_shape])
    out: list = [((),) if d == 1 else None for d in out_shape]
    ins = [k for k, d in enumerate(in_shape) if d != 1]
    outs = [k for k, d in enumerate(out_shape) if d != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        ii, jj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                ii.append(ins[i])
                pi *= in_shape[ins[i]]
                i += 1
            else:
                jj.append(outs[j])
                pj *= out_shape[outs[j]]
                j += 1
        merged = _merge(g, [x.axes[k] for k in ii])
        split = None if merged is None else _split(g, merged, [out_shape[k] for k in jj])
        if split is None:
            why = "a reshape that splits or interleaves units"
            g.fix_axes([x.axes[k] for k in ii], why)
            split = [g.axis(out_shape[k], why) for k in jj]
        for k, ax in zip(jj, split):
            out[k] = ax
    return _T(out)


def _merge(g: _Graph, axes: list) -> list | None:
    """Row-major merge of axes into segments; None where it would interleave segments."""
    segs = [s for s in axes[0]]
    for ax in axes[1:]:
        if len(ax) != 1:
            return None
        segs = [s + ax[0] for s in segs]
    return segs


def _split(g: _Graph, segs: list, sizes: list) -> list | None:
    """One axis of segments ``segs`` viewed as axes of ``sizes``. A unit variable that straddles a
    boundary is asked to be created split on the next pass (a projection viewed as heads)."""
    if len(sizes) == 1:
        return [tuple(segs)]
    if len(segs) != 1:
        return None
    factors = list(segs[0])
    out = []
    i = 0
    for d in sizes:
        take, p = [], 1
        while p < d and i < len(factors):
            f = factors[i]
            fs = g.v.size[f]
            if p * fs > d:
                if d % p == 0 and fs % (d // p) == 0:
                    g.request(f, ("prod", (d // p, fs // (d // p))))
                return None
            take.append(f)
            p *= fs
            i += 1
        if p != d:
            return None
        out.append((tuple(take),))
    return out if i == len(factors) else None


def _cut(g: _Graph, ax: Axis, cuts: list[int]) -> list | None:
    """The segments of ``ax`` between consecutive ``cuts`` (positions along the axis, first 0 and
    last its size), or None after asking for the segments that a cut falls inside to be created
    as several (a fused q/k/v projection split in three)."""
    bounds = list(itertools.accumulate([0] + [g.size((seg,)) for seg in ax]))
    inside = [c for c in cuts if c not in bounds]
    if not inside:
        return [tuple(seg for seg, lo in zip(ax, bounds) if a <= lo < b) for a, b in zip(cuts, cuts[1:])]
    for seg, lo, hi in zip(ax, bounds, bounds[1:]):
        mine = [c - lo for c in inside if lo < c < hi]
        if not mine or not seg:
            continue
        rest = math.prod(g.v.size[f] for f in seg[1:])
        if any(c % rest for c in mine):
            continue
        pts = [0] + [c // rest for c in mine] + [g.v.size[seg[0]]]
        g.request(seg[0], ("sum", tuple(b - a for a, b in zip(pts, pts[1:]))))
    return None


def _linear(g: _Graph, a: _Args, out_shape, where: str) -> _T:
    x = g.as_t(a.get("input", 0))
    w, b = a.get("weight", 1), a.get("bias", 2)
    out = g.axis(out_shape[-1], key="out")
    g.bind(w, [out, x.axes[-1]], where)
    g.bind(b, [out], where)
    g.producers.append((out, where))
    return _T(x.axes[:-1] + [out])


def _conv(g: _Graph, a: _Args, out_shape, where: str, transposed: bool = False) -> _T:
    x = g.as_t(a.get("input", 0))
    w, b = a.get("weight", 1), a.get("bias", 2)
    groups = int(a.get("groups", 6, 1))
    wshape = w.shape if isinstance(w, _P) else tuple(g.size(ax) for ax in g.as_t(w).axes)
    k = len(wshape) - 2
    c = len(x.axes) - k - 1
    for ax in x.axes[c + 1:]:
        g.fix_axes([ax], _SPATIAL)
    spatial_out = [g.axis(d, _SPATIAL) for d in out_shape[c + 1:]]
    kernel = [g.axis(d, _SPATIAL) for d in wshape[2:]]
    cin, cout = g.size(x.axes[c]), out_shape[c]
    if groups == 1:
        out = g.axis(cout, key="out")
        g.bind(w, ([x.axes[c], out] if transposed else [out, x.axes[c]]) + kernel, where)
        g.producers.append((out, where))
    elif groups == cin == cout:
        # Depthwise: each channel is its own group; its units are the input's.
        out = x.axes[c]
        g.bind(w, [out, g.axis(1)] + kernel, where)
    else:
        why = f"grouped convolution (groups={groups})"
        g.fix_axes([x.axes[c]], why)
        out = g.axis(cout, why)
        g.bind(w, [g.axis(d, why) for d in wshape[:2]] + kernel, where)
        g.producers.append((out, where))
    g.bind(b, [out], where)
    return _T(x.axes[:c] + [out] + spatial_out)


def _batch_norm(g: _Graph, a: _Args, out_shape, where: str) -> _T:
    x = g.as_t(a.get("input", 0))
    ch = [x.axes[1]] if len(x.axes) > 1 else [x.axes[0]]
    for name, pos in (("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4)):
        g.bind(a.get(name, pos), ch, where)
    return x


def _layer_norm(g: _Graph, a: _Args, out_shape, where: str) -> _T:
    x = g.as_t(a.get("input", 0))
    ns = a.get("normalized_shape", 1)
    k = 1 if isinstance(ns, int) else len(ns)
    for name, pos in (("weight", 2), ("bias", 3)):
        g.bind(a.get(name, pos), x.axes[-k:], where)
    return x


def _group_norm(g: _Graph, a: _Args, out_shape, where: str) -> _T:
    x = g.as_t(a.get("input", 0))
    groups = int(a.get("num_groups", 1, 1))
    c = g.size(x.axes[1])
    if groups not in (1, c):
        # Statistics are shared within a group of channels: only moves inside a group would keep
        # them, which one permutation per axis cannot express here.
        g.fix_axes([x.axes[1]], f"GroupNorm with {groups} groups of channels")
    for name, pos in (("weight", 2), ("bias", 3)):
        g.bind(a.get(name, pos), [x.axes[1]], where)
    return x


def _embedding(g: _Graph, a: _Args, out_shape, where: str) -> _T:
    idx = g.as_t(a.get("input", 0, a.get("indices")))
    w = a.get("weight", 1)
    out = g.axis(out_shape[-1], key="out")
    g.bind(w, [g.axis(w.shape[0] if isinstance(w, _P) else out_shape[-1], _INPUT), out], where)
    g.producers.append((out, where))
    axes = list(idx.axes) if isinstance(idx, _T) else [g.axis(d) for d in out_shape[:-1]]
    return _T(axes + [out])


def _spatial(g: _Graph, x: _T, out_shape, k: int) -> _T:
    """Pooling-like: the last ``k`` axes mix, the others (batch, channels) pass through."""
    for ax in x.axes[len(x.axes) - k:]:
        g.fix_axes([ax], _SPATIAL)
    return _T(x.axes[: len(x.axes) - k] + [g.axis(d, _SPATIAL) for d in out_shape[len(out_shape) - k:]])


def _permute_axes(x: _T, dims) -> _T:
    nd = len(x.axes)
    return _T([x.axes[_norm_dim(int(d), nd)] for d in dims])


def _getitem(g: _Graph, x: _T, index: Any, out_shape, where: str) -> _T:
    """Basic indexing: full slices keep an axis, ``None`` adds one, anything else on an axis fixes
    it (selecting a unit by position depends on the order of the units)."""
    idx = index if isinstance(index, tuple) else (index,)
    tensor_at = [k for k, i in enumerate(idx) if isinstance(i, (_T, _P))]
    if len(tensor_at) == 1 and all(i == slice(None) for k, i in enumerate(idx) if k != tensor_at[0]):
        # One index tensor on one axis (a relative-position table gathered by a buffer of
        # indices): that axis is addressed by position, the others pass through.
        k = tensor_at[0]
        t = g.as_t(idx[k])
        why = "indexing along a unit axis"
        g.fix_axes([x.axes[k]], why)
        g.fix_axes(t.axes, why)
        new = [g.axis(g.size(ax), why) for ax in t.axes]
        out = x.axes[:k] + new + x.axes[k + 1:]
        if [g.size(ax) for ax in out] == list(out_shape):
            return _T(out)
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) for i in idx):
        g.fix_axes(x.axes, "advanced indexing")
        return _T([g.axis(d, "advanced indexing") for d in out_shape])
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list = []
    for i in idx:
        if i is Ellipsis:
            expanded += [slice(None)] * (len(x.axes) - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (len(x.axes) - sum(1 for i in expanded if i is not None))
    out, k = [], 0
    for i in expanded:
        if i is None:
            out.append(((),))
            continue
        ax = x.axes[k]
        k += 1
        if isinstance(i, slice) and i == slice(None):
            out.append(ax)
            continue
        if isinstance(i, slice) and all(isinstance(v, (int, type(None))) for v in (i.start, i.stop, i.step)):
            size = g.size(ax)
            lo, hi, step = i.indices(size)
            piece = _slice_axis(g, ax, lo, hi, step, size)
            if piece is not None:
                out.append(piece)
                continue
        g.fix_axes([ax], "indexing along a unit axis")
        if isinstance(i, slice):
            out.append(g.axis(out_shape[len(out)], "indexing along a unit axis"))
    if [g.size(ax) for ax in out] != list(out_shape):
        g.fix_axes(x.axes + out, "indexing")
        return _T([g.axis(d, "indexing") for d in out_shape])
    return _T(out)


def _call(g: _Graph, op: str, a: _Args, out_shape: Any, where: str) -> Any:
    """Applies the rule of ``op``; returns None when there is none (the caller fixes)."""
    tensors = [v for v in a.values() if isinstance(v, (_T, _P))]
    if op in _SHAPE_ONLY or (op == "getattr" and a.get("name", 1) in _SHAPE_ONLY):
        return ("shape", None)
    if op == "multi_head_attention":
        return _mha(g, a, out_shape, where)
    if op == "getitem" and isinstance(a.get("input", 0), (list, tuple)):
        return ("ok", a.get("input", 0)[a.get("index", 1)])
    if op == "scaled_dot_product_attention" and isinstance(out_shape, tuple):
        return _sdpa(g, a, out_shape, where)
    if op == "addmm" and isinstance(out_shape, tuple):
        return _addmm(g, a, out_shape, where)
    if not isinstance(out_shape, tuple) or (out_shape and not isinstance(out_shape[0], int)):
        if op in ("split", "split_with_sizes", "chunk", "unsafe_split", "tensor_split") and isinstance(out_shape, list):
            return _split_op(g, a, out_shape)
        return None
    x = g.as_t(a.get("input", 0, a.get("self")))
    if op in _CAST and isinstance(x, _T) and len(x.axes) == len(out_shape):
        return ("ok", _T(list(x.axes)))
    if op in _UNARY and isinstance(x, _T) and len(x.axes) == len(out_shape):
        if op in ("softmax", "log_softmax", "_softmax", "_log_softmax") or len(tensors) == 1:
            return ("ok", _T(list(x.axes)))
        return ("ok", _elementwise(g, tensors, out_shape, where))
    if op in _BINARY:
        return ("ok", _elementwise(g, tensors, out_shape, where))
    if op == "linear":
        return ("ok", _linear(g, a, out_shape, where))
    if op in ("conv1d", "conv2d", "conv3d"):
        return ("ok", _conv(g, a, out_shape, where))
    if op in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        # F.conv_transpose*d has groups at position 6 too (after output_padding, before dilation).
        return ("ok", _conv(g, a, out_shape, where, transposed=True))
    if op == "convolution":  # ATen's generic form
        a = _Args((), {**a.kwargs, "groups": a.get("groups", None, 1)})
        return ("ok", _conv(g, a, out_shape, where, transposed=bool(a.get("transposed", None, False))))
    if op in ("batch_norm", "instance_norm"):
        return ("ok", _batch_norm(g, a, out_shape, where))
    if op == "layer_norm":
        return ("ok", _layer_norm(g, a, out_shape, where))
    if op == "group_norm":
        return ("ok", _group_norm(g, a, out_shape, where))
    if op == "embedding":
        return ("ok", _embedding(g, a, out_shape, where))
    if op in ("cat", "concat", "concatenate"):
        ts = [g.as_t(t) for t in a.get("tensors", 0)]
        ts = [t for t in ts if isinstance(t, _T)]
        d = _norm_dim(int(a.get("dim", 1, 0)), len(out_shape))
        ts = [t for t in ts if len(t.axes) == len(out_shape) and g.size(t.axes[d]) > 0]
        if not ts:
            return None
        out = []
        for k in range(len(out_shape)):
            if k == d:
                out.append(tuple(seg for t in ts for seg in t.axes[k] if seg or g.size(t.axes[k]) == 1))
            else:
                ax = ts[0].axes[k]
                for t in ts[1:]:
                    ax = g.unify(ax, t.axes[k], where)
                out.append(ax)
        if g.size(out[d]) != out_shape[d]:
            return None
        return ("ok", _T(out))
    if not isinstance(x, _T):
        return None
    nd = len(x.axes)
    if op in ("flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
              "_unsafe_view", "squeeze_", "unsqueeze_"):
        return ("ok", _reshape(g, x, out_shape, where))
    if op in ("permute", "permute_"):
        dims = a.get("dims", 1)
        if not isinstance(dims, (list, tuple)):
            dims = a.args[1:]
        return ("ok", _permute_axes(x, dims))
    if op in ("transpose", "swapaxes", "swapdims", "transpose_"):
        d0, d1 = _norm_dim(int(a.get("dim0", 1)), nd), _norm_dim(int(a.get("dim1", 2)), nd)
        dims = list(range(nd))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return ("ok", _permute_axes(x, dims))
    if op in ("t", "numpy_T") and nd == 2:
        return ("ok", _permute_axes(x, [1, 0]))
    if op in ("expand", "expand_as", "broadcast_to"):
        return ("ok", _elementwise(g, [x], out_shape, where))
    if op in _REDUCE:
        dim = a.get("dim", 1)
        keep = bool(a.get("keepdim", 2, False))
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            return ("ok", _T([((),)] * len(out_shape)))
        if not isinstance(dim, (int, list, tuple)):
            return None
        dims = {_norm_dim(int(d), nd) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        # A sum or mean over an axis does not depend on the order of its units.
        out = [((),) if k in dims else ax for k, ax in enumerate(x.axes) if keep or k not in dims]
        if len(out) != len(out_shape):
            return None
        return ("ok", _T(out))
    if op in ("matmul", "mm", "bmm") and len(tensors) == 2:
        other = a.get("other", 1, a.get("mat2"))
        y = g.as_t(other)
        if isinstance(y, _T) and nd >= 2 and len(y.axes) >= 2:
            g.unify(x.axes[-1], y.axes[-2], where)
            batch = _elementwise(g, [_T(x.axes[:-2]), _T(y.axes[:-2])], tuple(out_shape[:-2]), where)
            if isinstance(other, _P):
                g.producers.append((y.axes[-1], where))
            return ("ok", _T(batch.axes + [x.axes[-2], y.axes[-1]]))
        return None
    if op in ("slice", "narrow"):
        dim = _norm_dim(int(a.get("dim", 1, 0)), nd)
        size = g.size(x.axes[dim])
        if op == "narrow":
            start = int(a.get("start", 2, 0))
            end = start + int(a.get("length", 3, size))
            step = 1
        else:
            start, end, step = a.get("start", 2, None), a.get("end", 3, None), a.get("step", 4, 1)
            start, end, _ = slice(start, end).indices(size)
        piece = _slice_axis(g, x.axes[dim], start, end, step or 1, size)
        if piece is None:
            # Only the sliced axis depends on the order of its units.
            why = "a slice that cuts a unit axis"
            g.fix_axes([x.axes[dim]], why)
            piece = g.axis(out_shape[dim], why)
        return ("ok", _T(x.axes[:dim] + [piece] + x.axes[dim + 1:]))
    if "pool" in op or op in ("interpolate", "upsample", "upsample_nearest2d", "upsample_bilinear2d", "pad"):
        if "with_indices" in op or a.get("return_indices", None):
            return None
        k = 3 if "3d" in op else 1 if "1d" in op else 2
        if op in ("interpolate", "pad", "upsample"):
            k = len(out_shape) - 2
        if op == "pad":
            pads = a.get("pad", 1, ())
            k = max(1, (len(pads) + 1) // 2)
        if nd != len(out_shape) or k >= nd:
            return None
        return ("ok", _spatial(g, x, out_shape, k))
    if op == "getitem":
        return ("ok", _getitem(g, x, a.get("index", 1), out_shape, where))
    if op == "select":  # x.select(dim, i): one unit picked by position
        dim = _norm_dim(int(a.get("dim", 1, 0)), nd)
        g.fix_axes([x.axes[dim]], "indexing along a unit axis")
        return ("ok", _T(x.axes[:dim] + x.axes[dim + 1:]))
    if op == "index":  # ATen advanced indexing: indices is a list with None for untouched axes
        indices = a.get("indices", 1)
        if isinstance(indices, (list, tuple)):
            return ("ok", _getitem(g, x, tuple(slice(None) if i is None else i for i in indices), out_shape, where))
        return None
    if op == "_patch_merging_pad":
        # torchvision Swin's patch merging: pads (..., H, W, C) and concatenates its four 2x2
        # interleaved sub-grids along the channels: the channel axis is C's units four times.
        if g.size(x.axes[-1]) * 4 != out_shape[-1]:
            return None
        for ax in x.axes[-3:-1]:
            g.fix_axes([ax], _SPATIAL)
        channels = tuple(x.axes[-1]) * 4
        return ("ok", _T(x.axes[:-3] + [g.axis(d, _SPATIAL) for d in out_shape[-3:-1]] + [channels]))
    if op == "_get_relative_position_bias":  # torchvision Swin: table (M, heads) -> (1, heads, N, N)
        table = g.as_t(a.get("relative_position_bias_table", 0))
        if isinstance(table, _T) and len(table.axes) == 2 and len(out_shape) == 4:
            g.fix_axes([table.axes[0]], _SPATIAL)
            return ("ok", _T([((),), table.axes[1]] + [g.axis(d, _SPATIAL) for d in out_shape[2:]]))
        return None
    if op == "shifted_window_attention":
        return _swin_attention(g, a, out_shape, where)
    if op == "prelu":
        w = a.get("weight", 1)
        if isinstance(w, _P) and math.prod(w.shape) > 1:
            g.bind(w, [x.axes[1]], where)
        return ("ok", _T(list(x.axes)))
    return None


def _slice_axis(g: _Graph, ax: Axis, lo: int, hi: int, step: int, size: int) -> Axis | None:
    """The part ``[lo:hi]`` of a unit axis: whole segments (after asking for a split where the
    slice cuts one, e.g. the first half of a head for rotary embeddings), or None."""
    if step != 1 or hi <= lo:
        return None
    if lo == 0 and hi == size:
        return ax
    cuts = sorted({0, lo, hi, size})
    pieces = _cut(g, ax, cuts)
    if pieces is None:
        return None
    return pieces[cuts.index(lo)]


def _split_op(g: _Graph, a: _Args, out_shapes: list):
    """split / chunk along a unit axis: consecutive segments (q, k and v of a fused projection)."""
    x = g.as_t(a.get("input", 0))
    if not isinstance(x, _T) or not all(isinstance(s, tuple) and len(s) == len(x.axes) for s in out_shapes):
        return None
    dim = _norm_dim(int(a.get("dim", 2, 0)), len(x.axes))
    cuts = list(itertools.accumulate([0] + [s[dim] for s in out_shapes]))
    pieces = _cut(g, x.axes[dim], cuts)
    if pieces is None:
        why = "a split that cuts a unit axis"
        g.fix_axes([x.axes[dim]], why)
        pieces = [g.axis(s[dim], why) for s in out_shapes]
    return ("ok", [_T(x.axes[:dim] + [p if p else ((),)] + x.axes[dim + 1:]) for p in pieces])


def _addmm(g: _Graph, a: _Args, out_shape, where: str):
    """bias + mat1 @ mat2 (Hugging Face's Conv1D, whose weight is stored (in, out))."""
    m1, w = g.as_t(a.get("mat1", 1)), a.get("mat2", 2)
    if not isinstance(m1, _T) or len(m1.axes) != 2:
        return None
    if isinstance(w, _P):
        out = g.axis(w.shape[1], key="out")
        g.bind(w, [m1.axes[1], out], where)
        g.producers.append((out, where))
    else:
        w = g.as_t(w)
        if not isinstance(w, _T) or len(w.axes) != 2:
            return None
        g.unify(m1.axes[1], w.axes[0], where)
        out = w.axes[1]
    return ("ok", _elementwise(g, [_T([m1.axes[0], out]), a.get("input", 0)], out_shape, where))


def _sdpa(g: _Graph, a: _Args, out_shape, where: str):
    """scaled_dot_product_attention(q, k, v, mask): q and k share their last axis (within-head
    units), k and v their sequence axis, and all three their leading axes (batch, heads)."""
    q, k, v = (g.as_t(a.get(n, i)) for i, n in enumerate(("query", "key", "value")))
    if not all(isinstance(t, _T) and len(t.axes) >= 2 for t in (q, k, v)):
        return None
    batch_shape = tuple(out_shape[:-2])
    if any(len(t.axes) - 2 != len(batch_shape) for t in (q, k, v)):
        return None
    if tuple(g.size(ax) for ax in k.axes[:-2]) != batch_shape:
        return None  # grouped-query attention inside the kernel (enable_gqa): not expressible here
    g.unify(q.axes[-1], k.axes[-1], where)
    g.unify(k.axes[-2], v.axes[-2], where)
    batch = _elementwise(g, [_T(q.axes[:-2]), _T(k.axes[:-2]), _T(v.axes[:-2])], batch_shape, where)
    mask = a.get("attn_mask", 3)
    if isinstance(mask, (_T, _P)):
        scores = _T(batch.axes + [q.axes[-2], k.axes[-2]])
        shape = batch_shape + (g.size(q.axes[-2]), g.size(k.axes[-2]))
        _elementwise(g, [scores, mask], shape, where)
    return ("ok", _T(batch.axes + [q.axes[-2], v.axes[-1]]))


def _heads(g: _Graph, heads: int, dim: int) -> tuple | None:
    """Head, query/key within-head and value within-head factors of an attention layer."""
    parts = [g.axis(heads, key="heads"), g.axis(dim, key="qk"), g.axis(dim, key="v")]
    if any(len(ax) != 1 for ax in parts):
        return None
    return tuple(ax[0] for ax in parts)  # tuples of factors (empty for a size of 1)


def _swin_attention(g: _Graph, a: _Args, out_shape, where: str):
    """torchvision's shifted_window_attention(input (..., C), qkv_weight, proj_weight,
    relative_position_bias (1, heads, N, N), window_size, num_heads, shift_size, ...)."""
    names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale")
    arg = {n: a.get(n, i) for i, n in enumerate(names)}
    x = g.as_t(arg["input"])
    if not isinstance(x, _T) or arg["logit_scale"] is not None:
        return None
    c = g.size(x.axes[-1])
    heads = int(arg["num_heads"])
    parts = _heads(g, heads, c // heads)
    if parts is None:
        return None
    vh, vqk, vv = parts
    hq, hv = vh + vqk, vh + vv
    g.bind(arg["qkv_weight"], [(hq, hq, hv), x.axes[-1]], where)
    g.bind(arg["qkv_bias"], [(hq, hq, hv)], where)
    out = g.axis(out_shape[-1], key="out")
    g.bind(arg["proj_weight"], [out, (hv,)], where)
    g.bind(arg["proj_bias"], [out], where)
    bias = g.as_t(arg["relative_position_bias"])
    if isinstance(bias, _T) and len(bias.axes) == 4:
        g.unify(bias.axes[1], (vh,), where)
        g.fix_axes(bias.axes[2:], _SPATIAL)
    g.producers += [((hq,), where), ((hv,), where), (out, where)]
    for ax in x.axes[-3:-1]:
        g.fix_axes([ax], _SPATIAL)  # windows are shifted along the spatial axes
    return ("ok", _T(x.axes[:-1] + [out]))


def _mha(g: _Graph, a: _Args, out_shapes, where: str):
    """nn.MultiheadAttention: heads and within-head units inside its fused in-projection."""
    m, ref = a.kwargs["module"], a.kwargs["ref"]
    prefix = a.kwargs["prefix"]
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        return None
    q, k, v = (g.as_t(t) for t in a.args[:3])
    if not all(isinstance(t, _T) for t in (q, k, v)) or not isinstance(out_shapes, list):
        return None
    e = g.unify(g.unify(q.axes[-1], k.axes[-1], where), v.axes[-1], where)
    parts = _heads(g, m.num_heads, m.head_dim)
    if parts is None:
        return None
    vh, vqk, vv = parts
    hq, hv = vh + vqk, vh + vv
    inner = (hq, hq, hv)  # q, k and v side by side in the fused projection, each (heads, head_dim)
    g.bind(ref(f"{prefix}.in_proj_weight"), [inner, e], where)
    if m.in_proj_bias is not None:
        g.bind(ref(f"{prefix}.in_proj_bias"), [inner], where)
    out = g.axis(m.embed_dim, key="out")
    g.bind(ref(f"{prefix}.out_proj.weight"), [out, (hv,)], where)
    if m.out_proj.bias is not None:
        g.bind(ref(f"{prefix}.out_proj.bias"), [out], where)
    g.producers += [((hq,), where), ((hv,), where), (out, where)]
    nb = len(q.axes) - 1
    if nb == 2:  # batched: tie the batch axes of query, key and value
        b = 0 if m.batch_first else 1
        g.unify(g.unify(q.axes[b], k.axes[b], where), v.axes[b], where)
    g.unify(k.axes[-2 if nb == 1 else (1 if m.batch_first else 0)], v.axes[-2 if nb == 1 else (1 if m.batch_first else 0)], where)
    result = [_T(q.axes[:-1] + [out])]
    w = out_shapes[1] if len(out_shapes) > 1 else None
    if isinstance(w, tuple):
        seq_q = q.axes[-2] if nb == 1 else q.axes[1 if m.batch_first else 0]
        seq_k = k.axes[-2] if nb == 1 else k.axes[1 if m.batch_first else 0]
        lead = [] if nb == 1 else [q.axes[0 if m.batch_first else 1]]
        mid = [(vh,)] if len(w) == len(lead) + 3 else []  # per-head weights keep the head axis
        result.append(_T(lead + mid + [seq_q, seq_k]))
    else:
        result.append(None)
    return ("ok", result)


# ---------------------------------------------------------------------------------------------
# Modules as calls.

_ACT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.LogSigmoid, nn.Softsign, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Tanhshrink,
)


def _module_call(m: nn.Module, prefix: str, args: tuple, kwargs: dict,
                 ref: Callable[[str], Any]) -> tuple[str, _Args] | None:
    """A leaf module call as ``(op, arguments)`` in the functional vocabulary."""
    x = args[0] if args else kwargs.get("input")
    p = lambda n: ref(f"{prefix}.{n}") if getattr(m, n, None) is not None else None  # noqa: E731
    if isinstance(m, nn.Linear):
        return "linear", _Args((x, p("weight"), p("bias")), {})
    if isinstance(m, nn.MultiheadAttention):
        q = x
        k = args[1] if len(args) > 1 else kwargs.get("key", q)
        v = args[2] if len(args) > 2 else kwargs.get("value", k)
        return "multi_head_attention", _Args((q, k, v), {"module": m, "prefix": prefix, "ref": ref})
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        # Any padding mode pads along the spatial axes only.
        return "conv2d", _Args((x, p("weight"), p("bias")), {"groups": m.groups})
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv_transpose2d", _Args((x, p("weight"), p("bias")), {"groups": m.groups})
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return "batch_norm", _Args((x, p("running_mean"), p("running_var"), p("weight"), p("bias")), {})
    if isinstance(m, nn.LayerNorm):
        return "layer_norm", _Args((x, tuple(m.normalized_shape), p("weight"), p("bias")), {})
    if isinstance(m, nn.GroupNorm):
        return "group_norm", _Args((x, m.num_groups, p("weight"), p("bias")), {})
    if isinstance(m, nn.Embedding):
        return "embedding", _Args((x, p("weight")), {})
    if isinstance(m, nn.PReLU):
        return "prelu", _Args((x, p("weight")), {})
    if isinstance(m, _ACT_MODULES):
        return "relu", _Args((x,), {})
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return "flatten", _Args((x,), {})
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and m.return_indices:
        return None
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)) and m.return_indices:
        return None
    name = type(m).__name__
    for kind, k in (("Pool1d", 1), ("Pool2d", 2), ("Pool3d", 3), ("Pad1d", 1), ("Pad2d", 2), ("Pad3d", 3)):
        if name.endswith(kind):
            return f"pool{k}d", _Args((x,), {})
    if isinstance(m, nn.Upsample):
        return "interpolate", _Args((x,), {})
    return None


# ---------------------------------------------------------------------------------------------
# Graph walking.


def _out_shape(meta: Any) -> Any:
    """Shape(s) of a node's output from fx's ShapeProp ``tensor_meta`` or export's ``val``."""
    if meta is None:
        return None
    if hasattr(meta, "shape") and (not isinstance(meta, (list, tuple)) or hasattr(meta, "_fields")):
        return tuple(int(d) for d in meta.shape)
    if isinstance(meta, (list, tuple)):
        return [_out_shape(m) for m in meta]
    return None


def _op_name(node) -> str:
    t = node.target
    if node.op == "call_method":
        return str(t)
    packet = getattr(t, "_overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(t, "__name__", str(t))


def _run(gm, placeholders: dict[str, str], state_names: set[str], kind: str, plan: dict | None = None) -> _Graph:
    """Runs the rules over ``gm.graph``; ``placeholders`` maps placeholder names that are
    parameters or buffers (export) to their state_dict names; ``plan``: unit variables to create
    split (from the previous pass)."""
    g = _Graph(state_names, plan)
    env: dict[str, Any] = {}

    def load(a):
        if isinstance(a, torch.fx.Node):
            return env.get(a.name)
        if isinstance(a, (list, tuple)):
            return type(a)(load(x) for x in a) if not hasattr(a, "_fields") else tuple(load(x) for x in a)
        if isinstance(a, dict):
            return {k: load(x) for k, x in a.items()}
        if isinstance(a, slice):
            return slice(load(a.start), load(a.stop), load(a.step))
        return a

    def shape_meta(node):
        m = node.meta.get("tensor_meta", node.meta.get("val"))
        return _out_shape(m)

    def fresh(shape, why):
        if isinstance(shape, tuple):
            return _T([g.axis(d, why) for d in shape])
        if isinstance(shape, list):
            return [fresh(s, why) for s in shape]
        return None

    for index, node in enumerate(gm.graph.nodes):
        g.node = index
        shape = shape_meta(node)
        if node.op == "placeholder":
            if node.name in placeholders:
                env[node.name] = _P(placeholders[node.name], shape if isinstance(shape, tuple) else ())
            else:
                env[node.name] = fresh(shape, _INPUT)
            continue
        if node.op == "get_attr":
            obj = _get_attr(gm, str(node.target))
            if isinstance(obj, torch.Tensor):
                env[node.name] = _P(str(node.target), tuple(obj.shape))
            else:
                env[node.name] = None
            continue
        if node.op == "output":
            g.fix_value(load(node.args[0]), _OUTPUT)
            continue
        args, kwargs = load(node.args), load(node.kwargs)
        where = str(node.target) if node.op == "call_module" else node.name
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            call = _module_call(m, str(node.target), args, kwargs, lambda n: _P(n, tuple(_get_attr(gm, n).shape)))
            desc = f"module {type(m).__name__}"
            res = None if call is None else _call(g, call[0], call[1], shape, where)
            g.node_ops[node.name] = None if call is None else call[0]
        else:
            op = _op_name(node)
            a = _args_of(node, args, kwargs)
            desc = f"operation {op}"
            g.node_ops[node.name] = op
            res = _call(g, op, a, shape, where) if shape is not None or op in _SHAPE_ONLY or op in (
                "getitem", "getattr") else None
        if res is not None and res[0] == "shape":
            env[node.name] = None
            continue
        if res is None:
            why = f"unsupported {desc}"
            vals = list(args) + list(kwargs.values())
            g.fix_value(vals, why)
            env[node.name] = fresh(shape, why)
            continue
        env[node.name] = res[1]
    g.env = env
    return g


def _args_of(node, args, kwargs) -> _Args:
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        named = dict(kwargs)
        for s, v in zip(schema.arguments, args):
            named[s.name] = v
        if "self" in named:
            named["input"] = named.pop("self")
        if node.target.__name__.startswith("embedding") and "indices" in named:
            named["input"] = named.pop("indices")
        return _Args((), named)
    if node.op == "call_method":
        kwargs = dict(kwargs)
    return _Args(tuple(args), dict(kwargs))


def _get_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a tensor, a tuple of the forward's positional arguments or a dict "
        f"of its keyword arguments, got {type(example_inputs).__name__}"
    )


def _device_of(model: nn.Module):
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _to(x: Any, device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(y, device) for y in x)
    if isinstance(x, dict):
        return {k: _to(y, device) for k, y in x.items()}
    return x


class _eval_mode:
    """Eval mode and no grad while tracing, every module's flag restored after (tracing must not
    update BatchNorm statistics)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        for m, t in self.flags:
            m.training = t


@contextlib.contextmanager
def _quiet():
    """torch.export logs its failures (with the graph) before raising; the error we raise says
    what failed in one line, so silence the logs and stderr meanwhile."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _first_line(e: BaseException) -> str:
    """The exception's cause in one short line (ShapeProp wraps the real error in its message)."""
    cause = e.__cause__ or e
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text[:240]}"


def _shape_prop(gm, inputs: list) -> None:
    """Shapes of every node: with fake tensors (no arithmetic: ViT-B at 224x224 took 0.7 s for
    real on 2 cores) and, where an operation has no fake implementation, for real."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with _quiet():
            ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
        return
    except Exception:  # noqa: BLE001 - fall back to running the graph
        pass
    ShapeProp(gm).propagate(*inputs)


def _trace(model: nn.Module, example_inputs: Any):
    """(graph module, placeholder -> state name, kind): torch.fx first, torch.export after."""
    args, kwargs = _inputs(example_inputs)
    device = _device_of(model)
    args, kwargs = _to(args, device), _to(kwargs, device)
    errors = []
    with _eval_mode(model):
        try:
            gm = torch.fx.symbolic_trace(model, concrete_args=None)
            phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
            inputs = list(args)
            if kwargs:
                inputs += [kwargs.get(n.target, n.args[0] if n.args else None) for n in phs][len(args):]
            # ShapeProp prints a traceback before raising; the error below says it in one line.
            with contextlib.redirect_stderr(io.StringIO()):
                _shape_prop(gm, inputs)
            return gm, {}, "fx"
        except Exception as e:  # noqa: BLE001 - any tracer failure falls through to export
            errors.append(f"torch.fx: {_first_line(e)}")
        try:
            with _quiet():
                ep = torch.export.export(model, args, kwargs)
            sig = ep.graph_signature
            names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
            return ep.graph_module, names, "export"
        except Exception as e:  # noqa: BLE001
            errors.append(f"torch.export: {_first_line(e)}")
    raise ValueError(
        f"infer_spec: could not trace {type(model).__name__} ({'; '.join(errors)}); check that "
        "example_inputs run through the model, or pass spec= a rebasin_rs.PermutationSpec written "
        "by hand"
    )


def _infer(model: nn.Module, example_inputs: Any,
           keep: list | None = None) -> tuple[PermutationSpec, Coverage]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    gm, placeholders, kind = _trace(model, example_inputs)
    state_names = set(model.state_dict().keys())
    # Passes until no operation asks for a unit variable to be split (heads out of a projection,
    # then key/value groups out of the heads, ...); each pass is a plain walk over the graph.
    plan: dict = {}
    for _ in range(_MAX_PASSES):
        g = _run(gm, placeholders, state_names, kind, plan)
        new = g.next_plan()
        if len(new) == len(plan):
            break
        plan = new
    spec, cov = g.spec()
    if keep is not None:
        # The graph and the rules' state, for activation matching (which nodes carry which units).
        keep.append((gm, kind, g))
    return spec, cov


def trace_groups(model: nn.Module, example_inputs: Any) -> tuple[PermutationSpec, Any, dict[str, list]]:
    """(spec, fx graph module, group -> [(node name, unit axis, is a layer's output)]) where a node's output carries a
    group's units as a whole axis: layer outputs, and after nonlinearities, residual adds and
    normalisations (where activation matching measures them). Only for torch.fx-traceable models."""
    kept: list = []
    spec, _ = _infer(model, example_inputs, keep=kept)
    gm, kind, g = kept[0]
    if kind != "fx":
        raise ValueError(
            f"activation matching needs a model that torch.fx can trace ({type(model).__name__} needed "
            "torch.export); use method='weight'"
        )
    # After nonlinearities, residual adds and norms; and the layers' outputs before them, which
    # tell apart units that a ReLU silences on every input (dead units have equal, zero,
    # activations after it, and no assignment of them would be preferred).
    capture_ops = _UNARY - _CAST - {"softmax", "log_softmax", "_softmax", "_log_softmax"} | {
        "add", "add_", "iadd", "batch_norm", "layer_norm", "group_norm", "linear", "conv2d", "conv1d", "conv3d"}
    points: dict[str, list] = {name: [] for name in spec.groups}
    by_root = {r: name for name, r in g.group_roots.items()}
    for node_name, val in g.env.items():
        if not isinstance(val, _T) or g.node_ops.get(node_name) not in capture_ops:
            continue
        for k, ax in enumerate(val.axes):
            if len(ax) == 1 and len(ax[0]) == 1:
                name = by_root.get(g.v.find(ax[0][0]))
                if name is not None:
                    layer = g.node_ops.get(node_name) in ("linear", "conv1d", "conv2d", "conv3d")
                    points[name].append((node_name, k, layer))
    return spec, gm, points


def infer_spec(model: nn.Module, example_inputs: Any, *, warn: bool = True) -> PermutationSpec:
    """Infers the permutation spec of ``model`` from its traced graph.

    The model is traced with torch.fx (torch.export where fx fails) on ``example_inputs`` (moved
    to the model's device; the model runs once in eval mode without gradients, and its BatchNorm
    statistics and training flags are left as they were). Units that the tracer cannot prove safe
    to permute stay fixed: a spec never changes what the model computes.

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
    spec, cov = _infer(model, example_inputs)
    if warn and cov.unpermuted:
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


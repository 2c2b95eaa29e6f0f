"""The unit-variable graph: union-find over unit variables, abstract tensors, parameter binding.

Every axis of every tensor in a traced graph is described by *segments* of *factors*: an axis of a
Linear's output is one segment holding one unit variable; the input axis of a layer after
``torch.cat`` holds one segment per concatenated tensor; the axis that ``flatten`` makes out of a
``(C, H, W)`` map is one segment with the factors ``C, H, W`` (row-major). Each operation ties
variables together (union-find): a residual add ties the units of its operands, a Linear ties its
weight's input axis to its input's last axis. A variable that reaches the model's inputs or
outputs, or an operation the tracer does not understand, is *fixed*: never permuted.

An axis may also be *woven* (:class:`Woven`): its segments share their first factors, which run
outermost. GPT-NeoX's fused projection is heads outside, then each head's q, k and v: the segments
``(head, q), (head, k), (head, v)`` woven by one factor, where a plain axis of the same segments
would hold all q, then all k, then all v.

Refinement: when an operation views a unit axis as several (a projection viewed as (heads,
head_dim); a fused q/k/v output split in three), the variable's class is asked to be created split
on the next pass (:meth:`UnitGraph.request`), keyed by where it is created (a layer's output, a
parameter's axis); the tracer walks the graph again until nothing more splits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Seg = tuple  # of variable ids (factors, row-major); () is a segment of size 1
Axis = tuple  # of segments

# Reasons a variable is fixed that are not a shortcoming: they are not hidden units at all.
INPUT, OUTPUT, SPATIAL = "model input", "model output", "spatial"
# Positions that unbind picks apart (q, k and v of a fused projection): which tensor, not a unit.
SELECTOR = "picked apart by unbind"
BENIGN = {INPUT, OUTPUT, SPATIAL, SELECTOR}
NOT_UNITS = {INPUT, OUTPUT, SELECTOR}  # not counted as hidden units at all


class Woven(tuple):
    """An axis whose segments share their first ``outer`` factors, which run outermost: for each
    index of the outer factors (row-major), every segment's remaining factors in turn."""

    outer: int

    def __new__(cls, segs, outer: int):
        self = super().__new__(cls, segs)
        self.outer = outer
        return self

    def __eq__(self, other: object) -> bool:
        return tuple.__eq__(self, other) and outer_of(other) == self.outer

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self), self.outer))

    def __getnewargs__(self) -> tuple:  # copy and pickle
        return (tuple(self), self.outer)

    def __repr__(self) -> str:
        return f"Woven({tuple(self)!r}, outer={self.outer})"


def outer_of(ax: Any) -> int:
    """How many leading factors ``ax``'s segments share as an outer loop (0: a plain axis)."""
    return getattr(ax, "outer", 0)


def weave(segs, outer: int) -> Axis:
    """``segs`` woven by their first ``outer`` factors; a plain axis where that is the same (no
    outer factor, or one segment: row-major)."""
    segs = tuple(segs)
    return Woven(segs, outer) if outer and len(segs) > 1 else segs


class UnionFind:
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


@dataclass
class AbstractTensor:
    """A tensor of the traced graph as the rules see it: one axis (a tuple of segments of unit
    variables) per dimension. Rules read ``axes`` and build new ones from them."""

    axes: list
    value: Any = None  # a small integer constant known at trace time (an index), else None


@dataclass
class ParamRef:
    """A parameter or buffer read by the graph (``name`` in the model's state_dict), bound to
    axes at its first use."""

    name: str
    shape: tuple


class UnitGraph:
    """The unit variables of one pass over a graph and the parameters' axes bound to them."""

    def __init__(self, state_names: set[str], plan: dict | None = None) -> None:
        self.v = UnionFind()
        self.bound: dict[str, list] = {}
        self.state_names = state_names
        self.producers: list[Axis] = []  # layers' output axes: the hidden units coverage counts
        self.kinds: dict[int, str] = {}  # variable -> what coverage counts it as, where not units/heads
        self.constants: set[str] = set()  # tensors outside the state_dict with one value everywhere
        self.contracted: set[tuple[str, int]] = set()  # (parameter, axis) summed against the inputs
        self.roles: dict[tuple[str, int], str] = {}  # (spec member, axis) -> "in" (contracted) or "out"
        # Refinement: creation key -> ("prod", factor sizes) or ("sum", segment sizes).
        self.plan = plan or {}
        self.key_of: dict[int, tuple] = {}
        self.requests: dict[int, tuple] = {}
        self.node = -1  # index of the node being run: part of the creation keys
        self.node_ops: dict[str, Any] = {}  # node name -> the rule's operation name
        self.env: dict[str, Any] = {}  # node name -> abstract value (after the pass)

    # -- axes -------------------------------------------------------------------------------
    def axis(self, size: int, why: str | None = None, key: Any = None) -> Axis:
        """A fresh axis of ``size``, fixed for ``why`` if given; ``key`` names the unit variable
        it creates (a layer's outputs, a parameter's axis) so that a later pass can create it
        split."""
        if size == 1:
            return ((),)
        if key is None or why is not None:
            return ((self.v.new(size, why),),)
        made = self._make(key if isinstance(key, tuple) and key[0] == "param" else (self.node, key), size)
        if made is None:
            return ((self.v.new(size, "a split of units that cannot be expressed"),),)
        return made

    def _make(self, key: tuple, size: int) -> Axis | None:
        plan = self.plan.get(key)
        if plan is None:
            return ((self._leaf(key, size),),)
        kind, parts = plan
        subs: list = []
        for i, size_i in enumerate(parts):
            sub = self._make(key + (i,), size_i) if size_i != 1 else ((),)
            several = [j for j, s in enumerate(subs) if len(s) != 1]
            if sub is None or (kind == "sum" and outer_of(sub)) or (kind == "prod" and len(sub) != 1 and several):
                # A sum cannot hold a woven axis, and a product only one factor of several
                # segments: it stays whole, and the operation that wanted it cut fixes it
                # instead.
                sub = ((self._leaf(key + (i,), size_i),),)
            subs.append(sub)
        if kind == "sum":
            return tuple(seg for sub in subs for seg in sub)
        # A product of one sum (or woven axis) and single segments: each of its segments
        # times the others, woven by the factors before it (heads outside q | k | v).
        at = next((j for j, s in enumerate(subs) if len(s) != 1), 0)
        before = tuple(f for sub in subs[:at] for f in sub[0])
        after = tuple(f for sub in subs[at + 1:] for f in sub[0])
        segs = tuple(before + seg + after for seg in subs[at])
        return weave(segs, len(before) + outer_of(subs[at])) if before or outer_of(subs[at]) else segs

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

    def fix_axes(self, axes, why: str) -> None:
        for ax in axes:
            for seg in ax:
                for f in seg:
                    self.v.fix(f, why)

    def fix_value(self, x: Any, why: str) -> None:
        """Fixes every axis of an abstract value (a tensor, a parameter, or containers of them)."""
        if isinstance(x, ParamRef):
            x = self.as_tensor(x)
        if isinstance(x, AbstractTensor):
            self.fix_axes(x.axes, why)
        elif isinstance(x, (list, tuple)):
            for y in x:
                self.fix_value(y, why)
        elif isinstance(x, dict):
            for y in x.values():
                self.fix_value(y, why)

    def unify(self, a: Axis, b: Axis) -> Axis:
        """Ties two axes that must carry the same units; returns ``a``."""
        shape_a = [tuple(self.v.size[f] for f in seg) for seg in a]
        shape_b = [tuple(self.v.size[f] for f in seg) for seg in b]
        if shape_a == shape_b and outer_of(a) == outer_of(b):
            for sa, sb in zip(a, b):
                for fa, fb in zip(sa, sb):
                    self.v.union(fa, fb)
            return a
        # Same size laid out differently. When one side is a single unit variable, the next pass
        # creates it split like the other side (a projection whose output is later viewed as
        # heads); otherwise keep both fixed rather than guess.
        for one, other, shape in ((a, b, shape_b), (b, a, shape_a)):
            if len(one) == 1 and len(one[0]) == 1 and self.size(one) == self.size(other):
                if outer_of(other):
                    continue
                if len(other) == 1:
                    plan = ("prod", tuple(shape[0]))
                elif all(len(seg) <= 1 for seg in other):
                    plan = ("sum", tuple(self.size((seg,)) for seg in other))
                else:
                    continue
                if self.request(one[0][0], plan):
                    break
        why = "operands whose units are laid out differently"
        for w, p in ((a, b), (b, a)):
            # One segment against a woven axis with outer factors of the same sizes (heads of
            # whole head units against heads of head halves): the heads still match; only what
            # is inside a head is laid out differently.
            k = outer_of(w)
            if k and len(p) == 1 and len(p[0]) > k and [self.v.size[f] for f in p[0][:k]] == [
                    self.v.size[f] for f in w[0][:k]]:
                for fa, fb in zip(p[0][:k], w[0][:k]):
                    self.v.union(fa, fb)
                self.fix_axes([(p[0][k:],), tuple(seg[k:] for seg in w)], why)
                return a
        self.fix_axes([a, b], why)
        return a

    # -- parameters -------------------------------------------------------------------------
    def bind(self, p: Any, axes: list, contract: tuple = ()) -> None:
        """Ties parameter ``p``'s axes to ``axes`` (its layout at this use). ``p`` may also be an
        abstract tensor (a weight computed in the graph) or None (an absent bias). ``contract``:
        its axes summed against the input (see :meth:`Call.bind`)."""
        if p is None:
            return
        if isinstance(p, ParamRef):
            self.contracted.update((p.name, k) for k in contract)
        if isinstance(p, AbstractTensor):
            if len(p.axes) == len(axes):
                for a, b in zip(p.axes, axes):
                    self.unify(a, b)
            else:
                self.fix_axes(p.axes + list(axes), "a weight of unexpected rank")
            return
        if not isinstance(p, ParamRef):
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
                self.unify(a, b)

    def is_param_axis(self, ax: Axis) -> bool:
        """Whether ``ax`` is an axis of a parameter or buffer read so far."""
        return any(ax == b for axes in self.bound.values() for b in axes)

    def as_tensor(self, x: Any) -> Any:
        """A parameter as an abstract tensor (fresh axes at its first use); anything else as is."""
        if isinstance(x, ParamRef):
            if x.name not in self.bound:
                self.bound[x.name] = [self.axis(d, key=("param", x.name, k)) for k, d in enumerate(x.shape)]
            return AbstractTensor(list(self.bound[x.name]))
        return x

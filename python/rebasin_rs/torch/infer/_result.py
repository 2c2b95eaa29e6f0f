"""From a finished unit-variable graph to a PermutationSpec and its coverage.

Every class of variables that is not fixed and touches a parameter becomes one permutation group;
a class permuted consistently on every tensor that carries it leaves the function unchanged,
because every rule is equivariant.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from rebasin_rs._spec import PermutationSpec
from rebasin_rs.torch.infer._graph import BENIGN, NOT_UNITS, UnitGraph, outer_of


@dataclass
class Coverage:
    """How much of a model's hidden units a spec inferred by :func:`infer_spec` permutes.

    Attributes:
        permuted: Hidden units that some permutation group moves.
        hidden: Output units of every Linear, convolution and Embedding that are not the model's
            outputs (depthwise convolutions keep their input's units and are not counted twice;
            the positions that ``unbind`` picks apart, q, k and v of a fused projection, are not
            units).
        share: ``permuted / hidden``; 0.0 when no hidden units were found (nothing to permute is
            not full coverage).
        unpermuted: Why the other hidden units stay fixed: reason -> number of units.
        by_kind: ``{"units": (permuted, hidden), "heads": ..., "within-head": ...}``: an output
            axis that attention splits into (heads, head_dim) counts its heads and its within-head
            positions separately (a projection of 12 heads of 64 counts 12 heads and 64
            within-head units), and a grouped convolution's output counts its ``"groups"`` and
            ``"within-group"`` positions; every other axis counts its units.
    """

    permuted: int
    hidden: int
    share: float
    unpermuted: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)


def _members(units: UnitGraph, name: str, axes: list, groups: dict, views: dict, pieces: dict) -> None:
    """Adds parameter ``name``'s members to ``groups``: the parameter itself, or one block
    (*piece*) per combination of the segments of its concatenated axes; a member whose layout is
    not its natural shape gets a *view* (its factors, row-major)."""
    v = units.v
    seg_axes = [k for k, ax in enumerate(axes) if len(ax) > 1]
    # A woven axis is sliced under a shape that splits it in (outer, inner): the pieces cut the
    # inner part, whole in the outer (GPT-NeoX's q of every head: [:, 0:d] of (heads, 3 d)).
    outer = {k: math.prod(v.size[f] for f in ax[0][:outer_of(ax)]) for k, ax in enumerate(axes) if outer_of(ax)}
    under: list[int] = []
    at: dict[int, int] = {}  # axis -> the axis of the sliced shape that its pieces cut
    for k, ax in enumerate(axes):
        size = units.size(ax)
        if k in outer:
            under.append(outer[k])
            size //= outer[k]
        at[k] = len(under)
        under.append(size)
    starts = {k: list(itertools.accumulate([0] + [units.size((seg,)) // outer.get(k, 1) for seg in axes[k]]))
              for k in seg_axes}
    for combo in itertools.product(*[range(len(axes[k])) for k in seg_axes]):
        choice = dict(zip(seg_axes, combo))
        member = name if not outer else f"{name}.view({', '.join(map(str, under))})"
        slices = []
        if seg_axes:
            idx = [":"] * (at[max(seg_axes)] + 1)
            for k, s in choice.items():
                lo, hi = starts[k][s], starts[k][s + 1]
                idx[at[k]] = f"{lo}:{hi}"
                slices.append((at[k], lo, hi))
            member = f"{member}[{', '.join(idx)}]"
        view: list[int] = []
        found = []
        natural = []
        for k, ax in enumerate(axes):
            seg = ax[choice.get(k, 0)] if ax else ()
            if k in outer:
                natural.append(outer[k])
            natural.append(units.size((seg,)) // outer.get(k, 1))
            if not seg:
                view.append(1)
                continue
            for f in seg:
                r = v.find(f)
                if not v.why[r] and v.size[r] >= 2:
                    found.append((r, len(view)))
                    units.roles[(member, len(view))] = "in" if (name, k) in units.contracted else "out"
                view.append(v.size[f])
        if not found:
            continue
        if seg_axes:
            pieces[member] = (name, tuple(slices)) + ((tuple(under),) if outer else ())
        if view != natural:
            views[member] = tuple(view)
        for r, q in found:
            groups.setdefault(r, []).append((member, q))


def _unweave(units: UnitGraph, ax: tuple) -> tuple:
    """A woven axis whose inner factors all stay fixed, as one segment (its outer factors, then one
    fixed factor): the same permutations with one member instead of a piece per segment (Llama's
    q heads, whose halves the rotary embedding holds)."""
    k = outer_of(ax)
    if not k or any(not units.v.why[units.v.find(f)] for seg in ax for f in seg[k:]):
        return ax
    inner = units.size(ax) // math.prod(units.v.size[f] for f in ax[0][:k])
    return (ax[0][:k] + (units.v.new(inner, "inside the woven axis"),),)


def _group_names(groups: dict) -> dict[int, str]:
    """``P_<module of the first member>``, numbered where two groups would share a name."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for r, ms in groups.items():
        base = ms[0][0].split("[")[0].split(".view(")[0]
        base = "P_" + (base.rsplit(".", 1)[0] if "." in base else base)
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}#{k}"
        taken.add(name)
        names[r] = name
    return names


def _coverage(units: UnitGraph, groups: dict) -> Coverage:
    """Coverage over the layers' output units (each variable counted once)."""
    v = units.v
    hidden = permuted = 0
    unpermuted: dict[str, int] = {}
    seen: set[int] = set()
    kinds: dict[str, list[int]] = {}
    kinds_of = {v.find(f): kind for f, kind in units.kinds.items()}
    for ax in units.producers:
        for seg in ax:
            for pos, f in enumerate(seg):
                r = v.find(f)
                if f in seen:
                    continue
                seen.add(f)
                if v.why[r] & NOT_UNITS:
                    continue
                kind = kinds_of.get(r) or (
                    "units" if len(seg) == 1 else "within-head" if pos == len(seg) - 1 else "heads")
                tally = kinds.setdefault(kind, [0, 0])
                hidden += v.size[f]
                tally[1] += v.size[f]
                if r in groups:
                    permuted += v.size[f]
                    tally[0] += v.size[f]
                else:
                    why = "; ".join(sorted(v.why[r] - BENIGN)) or "no parameter to permute"
                    unpermuted[why] = unpermuted.get(why, 0) + v.size[f]
    return Coverage(permuted, hidden, permuted / hidden if hidden else 0.0, unpermuted,
                    {k: (t[0], t[1]) for k, t in kinds.items()})


def build_spec(units: UnitGraph) -> tuple[PermutationSpec, Coverage, dict[str, int]]:
    """(spec, coverage, group name -> root variable of its class)."""
    for name, axes in units.bound.items():
        if name not in units.state_names and name not in units.constants:
            # Not in state_dict (a plain attribute or a non-persistent buffer): permute_model
            # could not write it back, so its units stay where they are; unless it holds one
            # value everywhere, which every permutation leaves as it is.
            units.fix_axes(axes, f"tensor {name!r} is not in the state_dict")
    groups: dict[int, list[tuple[str, int]]] = {}
    views: dict[str, tuple[int, ...]] = {}
    pieces: dict[str, tuple[str, tuple]] = {}
    for name, axes in units.bound.items():
        if name in units.state_names:
            _members(units, name, [_unweave(units, ax) for ax in axes], groups, views, pieces)
    names = _group_names(groups)
    used = {m for ms in groups.values() for m, _ in ms}
    spec = PermutationSpec(
        {names[r]: tuple(ms) for r, ms in groups.items()},
        views={k: val for k, val in views.items() if k in used},
        pieces={k: val for k, val in pieces.items() if k in used},
    )
    return spec, _coverage(units, groups), {name: r for r, name in names.items()}

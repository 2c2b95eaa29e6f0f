"""Permutation specs: which axes of which parameters move together.

A spec is a set of permutation groups; each group is a list of ``(parameter name, axis)`` that are
permuted by one permutation (the hidden units of a layer appear on the output axis of its weight,
its bias, its normalisation parameters and buffers, and the input axis of the next weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rebasin_rs._errors import RebasinError

__all__ = ["PermutationSpec"]


def _shape(x: Any) -> tuple[int, ...]:
    # np.shape reads `.shape` when there is one (arrays, tensors) and converts anything else.
    return tuple(int(d) for d in np.shape(x))


@dataclass(frozen=True)
class PermutationSpec:
    """Groups of ``(parameter name, axis)`` that share one permutation.

    Attributes:
        groups: Permutation name -> tuple of ``(parameter name, axis)``.
        views: Optional member name -> shape under which its axes are counted (one entry may
            be -1), for a parameter whose axis holds several units' blocks: the first Linear
            layer after flattening a ``(C, H, W)`` feature map is viewed as ``(out, C, H, W)``.
        pieces: Optional member name -> ``(parameter name, ((axis, start, stop), ...))``: a
            member that is a block of a real parameter, for an axis made of several groups'
            units side by side (the input axis of a layer after a concatenation, a fused
            projection). The pieces of one parameter must not overlap; members named here are
            read from and written back to that parameter.

    Example:
        >>> import rebasin_rs as rb
        >>> spec = rb.PermutationSpec.from_axes_to_perm({
        ...     "fc1.weight": ("P1", None), "fc1.bias": ("P1",), "fc2.weight": (None, "P1")})
        >>> spec.groups["P1"]
        (('fc1.weight', 0), ('fc1.bias', 0), ('fc2.weight', 1))
    """

    groups: Mapping[str, tuple[tuple[str, int], ...]]
    views: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    pieces: Mapping[str, tuple[str, tuple[tuple[int, int, int], ...]]] = field(default_factory=dict)
    _axes: dict[str, dict[int, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups = {}
        axes: dict[str, dict[int, str]] = {}
        for name, members in self.groups.items():
            if not isinstance(name, str) or not name:
                raise RebasinError(f"spec: permutation names must be non-empty strings, got {name!r}")
            ms = []
            for member in members:
                try:
                    param, axis = member
                    axis = int(axis)
                except (TypeError, ValueError):
                    raise RebasinError(
                        f"spec: group {name!r} member {member!r} must be a (parameter name, axis) pair", group=name
                    ) from None
                if axis < 0:
                    raise RebasinError(f"spec: group {name!r}: axis {axis} of {param!r} must be >= 0",
                                       group=name, param=param, axis=axis)
                other = axes.setdefault(param, {}).get(axis)
                if other is not None:
                    raise RebasinError(
                        f"spec: axis {axis} of {param!r} is in two groups, {other!r} and {name!r}; "
                        "an axis can be permuted by one permutation only", group=name, param=param, axis=axis
                    )
                axes[param][axis] = name
                ms.append((str(param), axis))
            if not ms:
                raise RebasinError(f"spec: group {name!r} is empty; remove it or give it members", group=name)
            groups[name] = tuple(ms)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "_axes", axes)
        views = {}
        for name, shape in dict(self.views).items():
            shape = tuple(int(d) for d in shape)
            if sum(d == -1 for d in shape) > 1 or any(d < -1 or d == 0 for d in shape):
                raise RebasinError(f"spec: view of {name!r} must be positive sizes and at most one -1, got {shape}",
                                   param=name)
            views[name] = shape
        object.__setattr__(self, "views", views)
        pieces = {}
        for name, piece in dict(self.pieces).items():
            try:
                param, slices = piece
                slices = tuple((int(a), int(lo), int(hi)) for a, lo, hi in slices)
            except (TypeError, ValueError):
                raise RebasinError(
                    f"spec: piece {name!r} must be (parameter name, ((axis, start, stop), ...)), got {piece!r}",
                    param=name,
                ) from None
            if any(a < 0 or lo < 0 or hi <= lo for a, lo, hi in slices):
                raise RebasinError(f"spec: piece {name!r} has an empty or negative slice {slices}", param=name)
            pieces[name] = (str(param), slices)
        object.__setattr__(self, "pieces", pieces)

    def take(self, name: str, params: Mapping[str, Any]) -> Any:
        """The tensor of member ``name`` in ``params``: the parameter, or its block for a piece,
        reshaped to its view. A view of the caller's data where the array library allows it."""
        piece = self.pieces.get(name)
        if piece is None:
            x = params[name]
        else:
            real, slices = piece
            x = params[real]
            if not hasattr(x, "shape"):
                x = np.asarray(x)
            index = [slice(None)] * len(x.shape)
            for axis, lo, hi in slices:
                if axis >= len(index) or hi > x.shape[axis]:
                    raise RebasinError(
                        f"spec: piece {name!r} slices axis {axis} as [{lo}:{hi}] but {real!r} has "
                        f"shape {tuple(x.shape)}; pass a spec built for this model", param=name, axis=axis
                    )
                index[axis] = slice(lo, hi)
            x = x[tuple(index)]
        if not hasattr(x, "reshape"):
            x = np.asarray(x)
        return x.reshape(self.shape_of(name, x))

    def param_of(self, name: str) -> str:
        """The real parameter that member ``name`` reads (itself unless it is a piece)."""
        piece = self.pieces.get(name)
        return name if piece is None else piece[0]

    def shape_of(self, name: str, x: Any) -> tuple[int, ...]:
        """The shape under which the spec counts the axes of member ``name`` (its view, if any)."""
        shape = _shape(x)
        view = self.views.get(name)
        if view is None:
            return shape
        numel = 1
        for d in shape:
            numel *= d
        known = 1
        for d in view:
            if d != -1:
                known *= d
        resolved = tuple(numel // known if d == -1 else d for d in view)
        total = 1
        for d in resolved:
            total *= d
        if total != numel:
            raise RebasinError(
                f"spec: parameter {name!r} of shape {shape} cannot be viewed as {view}; "
                "fix the view (for a flattened feature map: (out, channels, height, width))", param=name
            )
        return resolved

    @classmethod
    def from_axes_to_perm(cls, axes_to_perm: Mapping[str, Sequence[str | None]]) -> PermutationSpec:
        """Builds a spec from the official ``axes_to_perm`` form: parameter name -> the
        permutation name of each axis (``None`` where the axis is not permuted)."""
        groups: dict[str, list[tuple[str, int]]] = {}
        for param, perms in axes_to_perm.items():
            for axis, p in enumerate(perms):
                if p is not None:
                    groups.setdefault(p, []).append((param, axis))
        return cls({k: tuple(v) for k, v in groups.items()})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``groups``, ``views``, ``pieces``); :meth:`from_dict` reads it back."""
        return {
            "format": "rebasin-rs spec 1",
            "groups": {g: [[p, a] for p, a in ms] for g, ms in self.groups.items()},
            "views": {k: list(v) for k, v in self.views.items()},
            "pieces": {k: [p, [list(sl) for sl in sls]] for k, (p, sls) in self.pieces.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        """The spec that :meth:`to_dict` wrote (or a hand-written dict with a ``groups`` entry)."""
        if not isinstance(d, Mapping) or "groups" not in d:
            raise RebasinError("spec: expected a mapping with a 'groups' entry (as PermutationSpec.to_dict writes)")
        pieces = {k: (v[0], tuple(tuple(sl) for sl in v[1])) for k, v in dict(d.get("pieces", {})).items()}
        return cls({g: tuple(tuple(m) for m in ms) for g, ms in d["groups"].items()},
                   views=dict(d.get("views", {})), pieces=pieces)

    def save(self, path: Any) -> None:
        """Writes the spec as JSON (atomically: a temporary file renamed over ``path``).

        Example:
            >>> import os, tempfile, rebasin_rs as rb
            >>> spec = rb.specs.mlp(["fc1", "fc2"])
            >>> path = os.path.join(tempfile.mkdtemp(), "spec.json")
            >>> spec.save(path)
            >>> rb.PermutationSpec.load(path) == spec
            True
        """
        import json

        from rebasin_rs._io import atomic_write

        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, text.encode())

    @classmethod
    def load(cls, path: Any) -> PermutationSpec:
        """Reads a spec that :meth:`save` wrote."""
        import json

        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise RebasinError(f"spec file {str(path)!r}: {e}") from None
        return cls.from_dict(d)

    @property
    def axes_to_perm(self) -> dict[str, dict[int, str]]:
        """Parameter name -> {axis: permutation name} (permuted axes only)."""
        return {p: dict(a) for p, a in self._axes.items()}

    def params(self) -> list[str]:
        """The member names the spec touches (parameters, or pieces of them), in first-seen order."""
        return list(self._axes)

    def real_params(self) -> list[str]:
        """The names of the parameters whose values the spec permutes, in first-seen order."""
        return list(dict.fromkeys(self.param_of(m) for m in self._axes))

    def restrict(self, names: Any) -> PermutationSpec:
        """The spec without the members whose parameter is not in ``names`` (groups left empty are
        dropped): for instance the learnable parameters only, leaving buffers out of a matching."""
        keep = set(names)
        groups = {g: tuple(m for m in ms if self.param_of(m[0]) in keep) for g, ms in self.groups.items()}
        groups = {g: ms for g, ms in groups.items() if ms}
        members = {m for ms in groups.values() for m, _ in ms}
        return PermutationSpec(
            groups,
            views={k: v for k, v in self.views.items() if k in members},
            pieces={k: v for k, v in self.pieces.items() if k in members},
        )

    def validate(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Checks the spec against parameters (and a second model's). Returns each group's size.

        Raises:
            RebasinError: (a ``ValueError``) a parameter is missing, an axis is out of range, the
                axes of a group disagree on their size, the two models' shapes differ, or a group
                has fewer than two units (nothing to permute); ``group``, ``param`` and ``axis``
                name it.
        """
        models = [("params_a", params_a)] + ([("params_b", params_b)] if params_b is not None else [])
        for label, params in models:
            for p in self.real_params():
                if p not in params:
                    close = [k for k in params if k.split(".")[-1] == p.split(".")[-1]][:3]
                    hint = f" (similar names: {close})" if close else ""
                    raise RebasinError(
                        f"{label}: the spec names parameter {p!r}, which is missing{hint}; "
                        "pass a spec built for this model", param=p
                    )
        if params_b is not None:
            for p in self.real_params():
                sa, sb = _shape(params_a[p]), _shape(params_b[p])
                if sa != sb:
                    raise RebasinError(
                        f"parameter {p!r} has shape {sa} in params_a but {sb} in params_b; "
                        "the two models must have the same architecture", param=p
                    )
        sizes: dict[str, int] = {}
        for name, members in self.groups.items():
            size = None
            first = None
            for p, axis in members:
                shape = _shape(self.take(p, params_a))
                if axis >= len(shape):
                    raise RebasinError(
                        f"spec: group {name!r} permutes axis {axis} of {p!r}, which has shape {shape}",
                        group=name, param=p, axis=axis,
                    )
                if size is None:
                    size, first = shape[axis], (p, axis)
                elif shape[axis] != size:
                    raise RebasinError(
                        f"spec: group {name!r} has axis {axis} of {p!r} of size {shape[axis]} but "
                        f"axis {first[1]} of {first[0]!r} of size {size}; every axis of a group "
                        "must have one size", group=name, param=p, axis=axis,
                    )
            if size is None or size < 2:
                raise RebasinError(
                    f"spec: group {name!r} permutes {size} unit(s); a permutation needs at least 2", group=name
                )
            sizes[name] = size
        return sizes


def check_spec(spec: Any) -> None:
    """TypeError unless ``spec`` is a :class:`PermutationSpec`."""
    if not isinstance(spec, PermutationSpec):
        raise TypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")

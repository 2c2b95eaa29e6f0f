"""Permutation specs: which axes of which parameters move together.

A spec is a set of permutation groups; each group is a list of ``(parameter name, axis)`` that are
permuted by one permutation (the hidden units of a layer appear on the output axis of its weight,
its bias, its normalisation parameters and buffers, and the input axis of the next weights).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rebasin_rs._errors import RebasinError

__all__ = ["PermutationSpec"]


def _shape(x: Any) -> tuple[int, ...]:
    # np.shape reads `.shape` when there is one (arrays, tensors) and converts anything else.
    return tuple(int(d) for d in np.shape(x))


def _dtype(x: Any) -> Any:
    dtype = getattr(x, "dtype", None)
    return np.asarray(x).dtype if dtype is None else dtype


def _is_float(x: Any) -> bool:
    """Whether ``x`` (an array, a tensor, a nested list) holds floating-point numbers."""
    if callable(getattr(x, "is_floating_point", None)):
        return bool(x.is_floating_point())
    dtype = _dtype(x)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return "float" in str(dtype)
    # bfloat16 from ml_dtypes is kind "V"; its name still says what it is.
    return dtype.kind == "f" or "float" in dtype.name


def _int(value: Any, what: str, **fields: Any) -> int:
    """``value`` as an int, for the integers inside a spec: a float (1.5), a string ("1") or a bool
    would silently become another axis or size, so they are refused."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise RebasinError(f"spec: {what} must be an int, got {value!r}", **fields)


def compare_states(params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                   labels: tuple[str, str] = ("params_a", "params_b")) -> None:
    """Checks that two models' state dicts (or parameter mappings) are of one architecture: the
    same names, and for each name the same shape and the same kind (floating point or not).

    Different architectures can share every name and shape a spec permutes (a ResNet-18 and a
    ResNet-34 share their first blocks): the spec alone cannot tell them apart, and B's other
    entries would be left unaligned without a word. Floating-point widths may differ (float16 vs
    float32); a float entry stored as an integer may not.

    Raises:
        RebasinError: the first entry that differs, in ``params_a``'s order then ``params_b``'s
            extra entries; its ``param`` names it.
    """
    la, lb = labels
    same = "the two models must have the same architecture (the same state_dict names, shapes and dtypes)"
    for k, va in params_a.items():
        if k not in params_b:
            raise RebasinError(f"{lb} has no entry {k!r}, which {la} has; {same}", param=k)
        vb = params_b[k]
        sa, sb = _shape(va), _shape(vb)
        if sa != sb:
            raise RebasinError(f"parameter {k!r} has shape {sa} in {la} but {sb} in {lb}; {same}", param=k)
        fa, fb = _is_float(va), _is_float(vb)
        if fa != fb:
            raise RebasinError(
                f"parameter {k!r} has dtype {_dtype(va)} in {la} but {_dtype(vb)} in {lb}; {same} "
                "(convert the one that was stored in another dtype back, e.g. with .float())", param=k
            )
    for k in params_b:
        if k not in params_a:
            raise RebasinError(f"{lb} has an entry {k!r}, which {la} lacks; {same}", param=k)


def _overlap(x: tuple, y: tuple) -> bool:
    """Whether two pieces' blocks share an element: their ranges meet on every axis (an axis that
    a piece does not slice is whole)."""
    rx = {a: (lo, hi) for a, lo, hi in x}
    ry = {a: (lo, hi) for a, lo, hi in y}
    for a in set(rx) & set(ry):
        (lo1, hi1), (lo2, hi2) = rx[a], ry[a]
        if hi1 <= lo2 or hi2 <= lo1:
            return False
    return True


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
            read from and written back to that parameter. A third entry, a shape, slices the
            parameter reshaped to it (row-major): a fused projection whose q, k and v alternate
            head by head (GPT-NeoX: ``(3 * heads * d, n)`` viewed as ``(heads, 3 * d, n)``, q
            the block ``[:, 0:d]``). All pieces of one parameter use one shape.

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
        if not isinstance(self.groups, Mapping):
            raise TypeError(f"groups must be a mapping of permutation name -> members, got {type(self.groups).__name__}")
        for what, value in (("views", self.views), ("pieces", self.pieces)):
            if not isinstance(value, Mapping):
                raise TypeError(f"{what} must be a mapping, got {type(value).__name__}")
        groups = {}
        axes: dict[str, dict[int, str]] = {}
        for name, members in self.groups.items():
            if not isinstance(name, str) or not name:
                raise RebasinError(f"spec: permutation names must be non-empty strings, got {name!r}")
            if isinstance(members, (str, bytes)) or not hasattr(members, "__iter__"):
                raise RebasinError(
                    f"spec: group {name!r} must be a sequence of (parameter name, axis) pairs, got {members!r}",
                    group=name,
                )
            ms = []
            for member in members:
                try:
                    param, axis = member
                except (TypeError, ValueError):
                    param = axis = None
                if isinstance(member, (str, bytes)) or not isinstance(param, str) or not param:
                    raise RebasinError(
                        f"spec: group {name!r} member {member!r} must be a (parameter name, axis) pair", group=name
                    )
                axis = _int(axis, f"group {name!r}: the axis of {param!r}", group=name, param=param)
                if axis < 0:
                    raise RebasinError(f"spec: group {name!r}: axis {axis} of {param!r} must be >= 0",
                                       group=name, param=param, axis=axis)
                other = axes.setdefault(param, {}).get(axis)
                if other == name:
                    raise RebasinError(f"spec: group {name!r} lists axis {axis} of {param!r} twice; list it once",
                                       group=name, param=param, axis=axis)
                if other is not None:
                    raise RebasinError(
                        f"spec: axis {axis} of {param!r} is in two groups, {other!r} and {name!r}; "
                        "an axis can be permuted by one permutation only", group=name, param=param, axis=axis
                    )
                axes[param][axis] = name
                ms.append((param, axis))
            if not ms:
                raise RebasinError(f"spec: group {name!r} is empty; remove it or give it members", group=name)
            groups[name] = tuple(ms)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "_axes", axes)
        views = {}
        for name, shape in dict(self.views).items():
            if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
                raise RebasinError(f"spec: view of {name!r} must be a sequence of sizes, got {shape!r}", param=name)
            shape = tuple(_int(d, f"view of {name!r}: every size", param=name) for d in shape)
            if sum(d == -1 for d in shape) > 1 or any(d < -1 or d == 0 for d in shape):
                raise RebasinError(f"spec: view of {name!r} must be positive sizes and at most one -1, got {shape}",
                                   param=name)
            views[name] = shape
        object.__setattr__(self, "views", views)
        pieces = {}
        for name, piece in dict(self.pieces).items():
            try:
                param, slices, *shape = piece
                slices = tuple((a, lo, hi) for a, lo, hi in slices)
                if len(shape) > 1 or (shape and (isinstance(shape[0], (str, bytes)) or not hasattr(shape[0], "__iter__"))):
                    raise ValueError
            except (TypeError, ValueError):
                param = None
            if not isinstance(param, str) or not param:
                raise RebasinError(
                    f"spec: piece {name!r} must be (parameter name, ((axis, start, stop), ...)) or (parameter "
                    f"name, slices, shape), got {piece!r}", param=name,
                )
            if shape:
                shape = tuple(_int(d, f"piece {name!r}: every size of its shape", param=name) for d in shape[0])
                if not shape or any(d < 1 for d in shape):
                    raise RebasinError(f"spec: piece {name!r} has shape {shape}; sizes must be positive", param=name)
            slices = tuple(tuple(_int(v, f"piece {name!r}: every bound of slice {sl!r}", param=name) for v in sl) for sl in slices)
            if any(a < 0 or lo < 0 or hi <= lo for a, lo, hi in slices):
                raise RebasinError(f"spec: piece {name!r} has an empty or negative slice {slices}", param=name)
            if len({a for a, _, _ in slices}) != len(slices):
                raise RebasinError(f"spec: piece {name!r} slices one axis twice {slices}; one slice per axis",
                                   param=name)
            if param == name:
                raise RebasinError(f"spec: piece {name!r} must have a name of its own, not its parameter's",
                                   param=name)
            pieces[name] = (param, slices, shape) if shape else (param, slices)
        object.__setattr__(self, "pieces", pieces)
        self._check_pieces()

    def _check_pieces(self) -> None:
        """Pieces are blocks of real parameters, written back into them: a block of a block, two
        blocks sharing elements, or a parameter that is also a member whole would be permuted
        twice, the last write silently winning."""
        by_param: dict[str, list[str]] = {}
        for name, (param, *_) in self.pieces.items():
            if param in self.pieces:
                raise RebasinError(
                    f"spec: piece {name!r} is a block of {param!r}, which is itself a piece; give the block "
                    "of the real parameter", param=name
                )
            by_param.setdefault(param, []).append(name)
        members = set(self._axes)
        for param, names in by_param.items():
            used = [m for m in names if m in members]
            if used and param in members:
                raise RebasinError(
                    f"spec: {param!r} is a member of a group and also has pieces ({used[0]!r}); put its "
                    "permuted axes on its pieces only", param=param
                )
            shapes = {self.pieces[m][2:] for m in names}
            if len(shapes) > 1:
                raise RebasinError(
                    f"spec: the pieces of {param!r} slice it under different shapes ({sorted(shapes)}); "
                    "give them one shape", param=param
                )
            for i, m in enumerate(names):
                for n in names[i + 1:]:
                    if _overlap(self.pieces[m][1], self.pieces[n][1]):
                        raise RebasinError(
                            f"spec: pieces {m!r} and {n!r} of {param!r} overlap; the pieces of one "
                            "parameter must be disjoint blocks", param=m
                        )

    def take(self, name: str, params: Mapping[str, Any]) -> Any:
        """The tensor of member ``name`` in ``params``: the parameter, or its block for a piece,
        reshaped to its view. A view of the caller's data where the array library allows it."""
        piece = self.pieces.get(name)
        if piece is None:
            x = params[name]
        else:
            real, slices, *shape = piece
            x = params[real]
            if not hasattr(x, "shape"):
                x = np.asarray(x)
            if shape:
                if math.prod(shape[0]) != math.prod(_shape(x)):
                    raise RebasinError(
                        f"spec: piece {name!r} slices {real!r} viewed as {shape[0]} but it has shape "
                        f"{tuple(x.shape)}; pass a spec built for this model", param=name
                    )
                x = x.reshape(shape[0])
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
        if not isinstance(axes_to_perm, Mapping):
            raise TypeError(f"axes_to_perm must be a mapping of parameter name -> permutation names, "
                            f"got {type(axes_to_perm).__name__}")
        groups: dict[str, list[tuple[str, int]]] = {}
        for param, perms in axes_to_perm.items():
            # ("P1") is the string "P1", not a 1-tuple: read letter by letter it would make
            # groups "P" and "1" on two axes.
            if isinstance(perms, (str, bytes)) or not hasattr(perms, "__iter__"):
                raise RebasinError(
                    f"spec: axes_to_perm[{param!r}] must be a tuple with one permutation name (or None) "
                    f"per axis, got {perms!r}; a single axis is written ({perms!r},)", param=param
                )
            for axis, p in enumerate(perms):
                if p is not None and (not isinstance(p, str) or not p):
                    raise RebasinError(
                        f"spec: axes_to_perm[{param!r}] axis {axis}: a permutation name must be a non-empty "
                        f"string or None, got {p!r}", param=param, axis=axis
                    )
                if p is not None:
                    groups.setdefault(p, []).append((param, axis))
        return cls({k: tuple(v) for k, v in groups.items()})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``groups``, ``views``, ``pieces``); :meth:`from_dict` reads it back."""
        return {
            "format": "rebasin-rs spec 1",
            "groups": {g: [[p, a] for p, a in ms] for g, ms in self.groups.items()},
            "views": {k: list(v) for k, v in self.views.items()},
            "pieces": {k: [v[0], [list(sl) for sl in v[1]]] + [list(x) for x in v[2:]] for k, v in self.pieces.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        """The spec that :meth:`to_dict` wrote (or a hand-written dict with a ``groups`` entry)."""
        if not isinstance(d, Mapping) or "groups" not in d:
            raise RebasinError("spec: expected a mapping with a 'groups' entry (as PermutationSpec.to_dict writes)")
        for key in ("groups", "views", "pieces"):
            if not isinstance(d.get(key, {}), Mapping):
                raise RebasinError(f"spec: {key!r} must be a mapping (as PermutationSpec.to_dict writes), "
                                   f"got {type(d[key]).__name__}")
        try:
            pieces = {k: (v[0], tuple(tuple(sl) for sl in v[1])) + tuple(tuple(x) for x in v[2:])
                      for k, v in dict(d.get("pieces", {})).items()}
            groups = {g: ms if isinstance(ms, str) else tuple(m if isinstance(m, str) else tuple(m) for m in ms)
                      for g, ms in d["groups"].items()}
        except (TypeError, IndexError, KeyError) as e:
            raise RebasinError(f"spec: malformed groups or pieces ({e}); write them as PermutationSpec.to_dict "
                               "does") from None
        return cls(groups, views=dict(d.get("views", {})), pieces=pieces)

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

        def unique(pairs: list) -> dict:
            # json keeps the last of two equal keys: a group (or a view, a piece) written twice
            # by hand would silently lose its first version.
            out: dict = {}
            for k, v in pairs:
                if k in out:
                    raise RebasinError(f"spec file {str(path)!r}: {k!r} appears twice in one mapping; "
                                       "merge the two entries")
                out[k] = v
            return out

        try:
            with open(path) as f:
                d = json.load(f, object_pairs_hook=unique)
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
        if isinstance(names, (str, bytes)):
            # A lone name would be read letter by letter, keeping nothing.
            raise TypeError(f"names must be a collection of parameter names, got the string {names!r}; "
                            f"write [{names!r}]")
        keep = set(names)
        groups = {g: tuple(m for m in ms if self.param_of(m[0]) in keep) for g, ms in self.groups.items()}
        groups = {g: ms for g, ms in groups.items() if ms}
        members = {m for ms in groups.values() for m, _ in ms}
        return PermutationSpec(
            groups,
            views={k: v for k, v in self.views.items() if k in members},
            pieces={k: v for k, v in self.pieces.items() if k in members},
        )

    def validate(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any] | None = None, *,
                 members_only: bool = False) -> dict[str, int]:
        """Checks the spec against parameters (and a second model's). Returns each group's size.

        With two models, they must be of one architecture: every entry of ``params_a`` and
        ``params_b``, permuted or not, must be in both with one shape and one kind of dtype
        (floating point or not), since aligning or merging models whose other entries differ
        would leave those entries wrong without a word. ``members_only=True`` compares the
        shapes of the spec's parameters only (:func:`rebasin_rs.weight_matching` does, as its
        mappings may hold the matched parameters alone).

        Raises:
            RebasinError: (a ``ValueError``) a parameter is missing, an axis is out of range, the
                axes of a group disagree on their size, the two models differ (names, shapes,
                float vs non-float dtypes), or a group has fewer than two units (nothing to
                permute); ``group``, ``param`` and ``axis`` name it.
            TypeError: ``params_a`` or ``params_b`` is not a mapping.

        Example:
            >>> import numpy as np, rebasin_rs as rb
            >>> spec = rb.specs.mlp(["fc1", "fc2"])
            >>> a = {"fc1.weight": np.ones((4, 3)), "fc1.bias": np.ones(4), "fc2.weight": np.ones((2, 4))}
            >>> spec.validate(a, a)
            {'P_fc1': 4}
        """
        models = [("params_a", params_a)] + ([("params_b", params_b)] if params_b is not None else [])
        for label, params in models:
            if not isinstance(params, Mapping):
                raise TypeError(f"{label} must be a mapping of name -> array or tensor, got {type(params).__name__}")
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
            if not members_only:
                compare_states(params_a, params_b)
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

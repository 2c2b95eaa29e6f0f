"""Built-in rules for operations that move, view, cut or index axes: reshapes, transposes, slices,
splits and indexing. A view that splits one unit axis into several (a projection viewed as
heads) asks the graph to create that unit variable split on the next pass."""

from __future__ import annotations

import itertools
import math
from typing import Any

from rebasin_rs.torch.infer._graph import SELECTOR, AbstractTensor, Axis, ParamRef, UnitGraph, outer_of, weave
from rebasin_rs.torch.infer._registry import Call, builtin
from rebasin_rs.torch.infer._rules import norm_dim


def _merge(axes: list) -> Axis | None:
    """Row-major merge of axes into one: at most one of them may have several segments; the axes
    before it weave its segments (heads then q | k | v: GPT-NeoX's fused projection)."""
    several = [k for k, ax in enumerate(axes) if len(ax) != 1]
    if len(several) > 1:
        return None
    at = several[0] if several else 0
    before = tuple(f for ax in axes[:at] for f in ax[0])
    after = tuple(f for ax in axes[at + 1:] for f in ax[0])
    segs = tuple(before + seg + after for seg in axes[at])
    outer = len(before) + outer_of(axes[at])
    return weave(segs, outer) if outer else segs


def _split(units: UnitGraph, ax: Axis, sizes: list) -> list | None:
    """Axis ``ax`` viewed as axes of ``sizes``. A unit variable that straddles a boundary is asked
    to be created split on the next pass (a projection viewed as heads). A woven axis splits
    where its outer factors end: (heads, q | k | v)."""
    if len(sizes) == 1:
        return [ax]
    if outer_of(ax):
        # Split where the outer factors end: they make the leading axes, the segments the rest
        # (one axis, or several when the segments themselves split: Falcon's grouped q/k/v).
        k = ax.outer
        inner = tuple(seg[k:] for seg in ax)
        lead = units.size((ax[0][:k],))
        j = next((j for j in range(1, len(sizes)) if math.prod(sizes[:j]) == lead), None)
        if j is None:
            return _split_woven_tail(units, ax, sizes)
        head = _split(units, (ax[0][:k],), sizes[:j])
        tail = _split(units, inner, sizes[j:])
        return None if head is None or tail is None else head + tail
    if len(ax) != 1:
        return _split_sum(units, ax, sizes)
    factors = list(ax[0])
    out = []
    i = 0
    for d in sizes:
        take, p = [], 1
        while p < d and i < len(factors):
            f = factors[i]
            fs = units.v.size[f]
            if p * fs > d:
                if d % p or fs % (d // p):
                    return None
                why = units.v.why[units.v.find(f)]
                if not why:
                    units.request(f, ("prod", (d // p, fs // (d // p))))
                    return None
                # A fixed variable never moves, nor do its pieces: cut it here, without another
                # pass (MobileViT views its spatial axes as (patches, positions in a patch)).
                factors[i:i + 1] = [units.v.new(d // p, min(why)), units.v.new(fs // (d // p), min(why))]
                continue
            take.append(f)
            p *= fs
            i += 1
        if p != d:
            return None
        out.append((tuple(take),))
    return out if i == len(factors) else None


def _split_woven_tail(units: UnitGraph, ax: Axis, sizes: list) -> list | None:
    """A woven axis viewed as (rows, ..., tail) where every segment ends in the same factors and
    those make the last axes: the rows are the woven axis without them (Falcon's grouped q/k/v,
    groups outside and each group's q heads | k | v inside, viewed as (rows, head_dim) before it
    is viewed as groups). Position ``(outer, segment, middle, tail)`` is row ``(outer, segment,
    middle)`` of the rows, then ``tail``: the same units in the same order."""
    k = ax.outer
    for j in range(len(sizes) - 1, 0, -1):
        tail = math.prod(sizes[j:])
        cut = []
        for seg in ax:
            t, p = len(seg), 1
            while t > k and p < tail:
                t -= 1
                p *= units.v.size[seg[t]]
            cut.append(t if p == tail and t >= k else None)
        if None in cut or len({seg[t:] for seg, t in zip(ax, cut)}) != 1:
            continue
        rows = weave(tuple(seg[:t] for seg, t in zip(ax, cut)), k)
        head = _split(units, rows, sizes[:j])
        rest = _split(units, (ax[0][cut[0]:],), sizes[j:])
        return None if head is None or rest is None else head + rest
    return None


def _split_sum(units: UnitGraph, ax: Axis, sizes: list) -> list | None:
    """Segments side by side, each ending in ``sizes[-1]`` units, viewed as (rows, sizes[-1]):
    Falcon's multi-query projection (q heads, then one k head and one v head, all of one head
    size) viewed as heads. The rows are the segments' leading factors; their trailing factors
    that make ``sizes[-1]`` become one axis, so they are tied. Segments of one size as many as
    the first axis are stacked instead (:func:`_stack`)."""
    if len(ax) == sizes[0] and len(sizes) >= 2 and len({units.size((seg,)) for seg in ax}) == 1:
        return _stack(units, ax, sizes)
    d = sizes[-1]
    if len(sizes) != 2:
        return None
    rows, last = [], None
    for seg in ax:
        # The segment's trailing factors that make the last axis (EfficientViT's q | k | v of
        # each head, (3, head_dim), after its scales are concatenated).
        t, p = len(seg), 1
        while t > 0 and p * units.v.size[seg[t - 1]] <= d:
            t -= 1
            p *= units.v.size[seg[t]]
        if p != d:
            # One factor holding several rows: ask for it split (a projection viewed as heads).
            # Not a factor among others: EfficientViT's (3 heads, head_dim) groups, split so,
            # become woven (heads outside q | k | v), which its concatenation of scales cannot
            # hold.
            f = seg[-1] if seg else None
            if f is not None and units.v.size[f] % d == 0 and len(seg) == 1:
                units.request(f, ("prod", (units.v.size[f] // d, d)))
            return None
        rows.append(seg[:t])
        tail = (seg[t:],)
        last = tail if last is None else units.unify(last, tail)
    return [tuple(rows), last]


def _stack(units: UnitGraph, ax: Axis, sizes: list) -> list | None:
    """``k`` segments of one size side by side viewed as (k, ...): EVA-02's q/k/v bias, built by
    concatenating three biases, then viewed with the projection as (3, heads, head_dim). The
    segments are tied (one permutation for all of them: a position of the rest of the view is
    the same unit of every segment), the leading axis picks a segment and stays fixed."""
    first = (ax[0],)
    for seg in ax[1:]:
        units.unify(first, (seg,))
    rest = _split(units, first, sizes[1:])
    if rest is None:
        return None
    return [((units.v.new(sizes[0], "segments stacked by a reshape"),),)] + rest


@builtin("flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
         "_unsafe_view", "squeeze_", "unsqueeze_")
def reshape(c: Call):
    """Runs of input axes and output axes of equal total size are matched from the left; each
    run is merged row-major and split again."""
    x = c.input()
    if x is None:
        return NotImplemented
    units, out_shape = c.units, c.out_shape
    in_shape = [units.size(ax) for ax in x.axes]
    if math.prod(in_shape) != math.prod(out_shape):
        why = "a reshape that changes the size"
        c.fix(x, why)
        return AbstractTensor([c.fixed_axis(d, why) for d in out_shape])
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
        merged = _merge([x.axes[k] for k in ii])
        split = None if merged is None else _split(units, merged, [out_shape[k] for k in jj])
        if split is None:
            why = "a reshape that splits or interleaves units"
            units.fix_axes([x.axes[k] for k in ii], why)
            split = [c.fixed_axis(out_shape[k], why) for k in jj]
        for k, ax in zip(jj, split):
            out[k] = ax
    return AbstractTensor(out)


def _permute_axes(x: AbstractTensor, dims) -> AbstractTensor:
    nd = len(x.axes)
    return AbstractTensor([x.axes[norm_dim(int(d), nd)] for d in dims])


@builtin("permute", "permute_")
def permute(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    dims = c.arg("dims", 1)
    if not isinstance(dims, (list, tuple)):
        dims = c.args[1:]
    return _permute_axes(x, dims)


@builtin("transpose", "swapaxes", "swapdims", "transpose_")
def transpose(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    nd = len(x.axes)
    d0, d1 = norm_dim(int(c.arg("dim0", 1)), nd), norm_dim(int(c.arg("dim1", 2)), nd)
    dims = list(range(nd))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return _permute_axes(x, dims)


@builtin("t", "numpy_T")
def t(c: Call):
    x = c.input()
    if x is None or len(x.axes) != 2:
        return NotImplemented
    return _permute_axes(x, [1, 0])


def _cut(units: UnitGraph, ax: Axis, cuts: list[int]) -> list | None:
    """The segments of ``ax`` between consecutive ``cuts`` (positions along the axis, first 0 and
    last its size), or None after asking for the segments that a cut falls inside to be created
    as several (a fused q/k/v projection split in three)."""
    if outer_of(ax):
        return None  # a woven axis's segments are not contiguous
    bounds = list(itertools.accumulate([0] + [units.size((seg,)) for seg in ax]))
    inside = [c for c in cuts if c not in bounds]
    if not inside:
        return [tuple(seg for seg, lo in zip(ax, bounds) if a <= lo < b) for a, b in zip(cuts, cuts[1:])]
    for seg, lo, hi in zip(ax, bounds, bounds[1:]):
        mine = [c - lo for c in inside if lo < c < hi]
        if not mine or not seg:
            continue
        rest = math.prod(units.v.size[f] for f in seg[1:])
        if any(c % rest for c in mine):
            continue
        pts = [0] + [c // rest for c in mine] + [units.v.size[seg[0]]]
        units.request(seg[0], ("sum", tuple(b - a for a, b in zip(pts, pts[1:]))))
    return None


def _slice_axis(units: UnitGraph, ax: Axis, lo: int, hi: int, step: int, size: int) -> Axis | None:
    """The part ``[lo:hi]`` of a unit axis: whole segments (after asking for a split where the
    slice cuts one, e.units. the first half of a head for rotary embeddings), or None."""
    if step != 1 or hi <= lo:
        return None
    if lo == 0 and hi == size:
        return ax
    cuts = sorted({0, lo, hi, size})
    pieces = _cut(units, ax, cuts)
    if pieces is None:
        return None
    return pieces[cuts.index(lo)]


@builtin("slice", "narrow")
def slice_(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    units = c.units
    dim = norm_dim(int(c.arg("dim", 1, 0)), len(x.axes))
    size = units.size(x.axes[dim])
    if c.op == "narrow":
        start = int(c.arg("start", 2, 0))
        end = start + int(c.arg("length", 3, size))
        step = 1
    else:
        start, end, step = c.arg("start", 2, None), c.arg("end", 3, None), c.arg("step", 4, 1)
        start, end, _ = slice(start, end).indices(size)
    piece = _slice_axis(units, x.axes[dim], start, end, step or 1, size)
    if piece is None:
        # Only the sliced axis depends on the order of its units.
        why = "a slice that cuts a unit axis"
        c.fix(x.axes[dim], why)
        piece = c.fixed_axis(c.out_shape[dim], why)
    return AbstractTensor(x.axes[:dim] + [piece] + x.axes[dim + 1:])


@builtin("split", "split_with_sizes", "chunk", "unsafe_split", "tensor_split", any_shape=True)
def split(c: Call):
    """split / chunk along a unit axis: consecutive segments (q, k and v of a fused projection)."""
    x, out_shapes = c.input(), c.out_shape
    if x is None or not isinstance(out_shapes, list):
        return NotImplemented
    if not all(isinstance(s, tuple) and len(s) == len(x.axes) for s in out_shapes):
        return NotImplemented
    dim = norm_dim(int(c.arg("dim", 2, 0)), len(x.axes))
    cuts = list(itertools.accumulate([0] + [s[dim] for s in out_shapes]))
    pieces = _cut(c.units, x.axes[dim], cuts)
    if pieces is None:
        why = "a split that cuts a unit axis"
        c.fix(x.axes[dim], why)
        pieces = [c.fixed_axis(s[dim], why) for s in out_shapes]
    return [AbstractTensor(x.axes[:dim] + [p if p else ((),)] + x.axes[dim + 1:]) for p in pieces]


def _as_slices(units: UnitGraph, x: AbstractTensor, idx: tuple) -> tuple:
    """Index lists and constant index tensors that pick a run of consecutive positions, as the
    slices they are (Falcon's ``qkv[..., [-2], :]`` picks its one key head)."""
    dots = [k for k, i in enumerate(idx) if i is Ellipsis]
    if len(dots) > 1 or any(i is None for i in idx) or len(idx) - len(dots) > len(x.axes):
        return idx
    if dots:
        k = dots[0]
        idx = idx[:k] + (slice(None),) * (len(x.axes) - len(idx) + 1) + idx[k + 1:]
    out = []
    for k, i in enumerate(idx):
        pos = i.value.tolist() if isinstance(i, AbstractTensor) and i.value is not None else i
        if isinstance(pos, list) and pos and all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
            size = units.size(x.axes[k])
            pos = [p + size if p < 0 else p for p in pos]
            if all(0 <= p < size for p in pos) and pos == list(range(pos[0], pos[0] + len(pos))):
                i = slice(pos[0], pos[0] + len(pos))
        out.append(i)
    return tuple(out)


def index_tensor(c: Call, x: AbstractTensor, index: Any) -> AbstractTensor:
    """Basic indexing: full slices keep an axis, ``None`` adds one, anything else on an axis fixes
    it (selecting a unit by position depends on the order of the units)."""
    units, out_shape = c.units, c.out_shape
    idx = index if isinstance(index, tuple) else (index,)
    idx = _as_slices(units, x, idx)
    tensor_at = [k for k, i in enumerate(idx) if isinstance(i, (AbstractTensor, ParamRef))]
    if len(tensor_at) == 1 and all(i == slice(None) for k, i in enumerate(idx) if k != tensor_at[0]):
        # One index tensor on one axis (a relative-position table gathered by a buffer of
        # indices): that axis is addressed by position, the others pass through.
        k = tensor_at[0]
        t = units.as_tensor(idx[k])
        why = "indexing along a unit axis"
        c.fix(x.axes[k], why)
        c.fix(t, why)
        new = [c.fixed_axis(units.size(ax), why) for ax in t.axes]
        out = x.axes[:k] + new + x.axes[k + 1:]
        if [units.size(ax) for ax in out] == list(out_shape):
            return AbstractTensor(out)
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) for i in idx):
        c.fix(x, "advanced indexing")
        return AbstractTensor([c.fixed_axis(d, "advanced indexing") for d in out_shape])
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list = []
    for i in idx:
        if i is Ellipsis:
            expanded += [slice(None)] * (len(x.axes) - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (len(x.axes) - sum(1 for i in expanded if i is not None))
    out, src, k = [], [], 0  # src: the input axis of each output axis (None: a new one)
    for i in expanded:
        if i is None:
            out.append(((),))
            src.append(None)
            continue
        ax = x.axes[k]
        k += 1
        if isinstance(i, slice) and i == slice(None):
            out.append(ax)
            src.append(k - 1)
            continue
        if isinstance(i, slice) and all(isinstance(v, (int, type(None))) for v in (i.start, i.stop, i.step)):
            size = units.size(ax)
            lo, hi, step = i.indices(size)
            piece = _slice_axis(units, ax, lo, hi, step, size)
            if piece is not None:
                out.append(piece)
                src.append(k - 1)
                continue
        if isinstance(i, int) and not isinstance(i, bool):
            # One position: the slice [i, i + 1] without its axis, a segment of one unit once
            # asked for (Falcon's grouped[..., -2, :] picks each group's key head).
            size = units.size(ax)
            lo = i + size if i < 0 else i
            if 0 <= lo < size and _slice_axis(units, ax, lo, lo + 1, 1, size) is not None:
                continue
        c.fix(ax, "indexing along a unit axis")
        if isinstance(i, slice) and len(out) < len(out_shape):
            out.append(c.fixed_axis(out_shape[len(out)], "indexing along a unit axis"))
            src.append(k - 1)
    if len(out) == len(out_shape) and all(units.size(ax) == d or src[j] is not None
                                          for j, (ax, d) in enumerate(zip(out, out_shape))):
        # A slice whose bounds the trace computed (``x[:, :N]`` with ``N`` from ``x.shape``)
        # reaches the rule without them: where the size changed, only that axis depends on the
        # order of its units.
        for j, (ax, d) in enumerate(zip(out, out_shape)):
            if units.size(ax) != d:
                c.fix(x.axes[src[j]], "a slice of unknown bounds")
                out[j] = c.fixed_axis(d, "a slice of unknown bounds")
        return AbstractTensor(out)
    units.fix_axes(x.axes + out, "indexing")
    return AbstractTensor([c.fixed_axis(d, "indexing") for d in out_shape])


@builtin("getitem", any_shape=True)
def getitem(c: Call):
    """An output of a call with several (a list or tuple), or indexing into a tensor."""
    first = c.arg("input", 0)
    if isinstance(first, (list, tuple)):
        return first[c.arg("index", 1)]
    x = c.input()
    if x is None or not isinstance(c.out_shape, tuple) or (c.out_shape and not isinstance(c.out_shape[0], int)):
        return NotImplemented
    return index_tensor(c, x, c.arg("index", 1))


@builtin("select")
def select(c: Call):
    """``x.select(dim, i)``: one unit picked by position."""
    x = c.input()
    if x is None:
        return NotImplemented
    dim = norm_dim(int(c.arg("dim", 1, 0)), len(x.axes))
    size = c.units.size(x.axes[dim])
    i = int(c.arg("index", 2, 0))
    lo = i + size if i < 0 else i
    # The slice [i, i + 1] without its axis: a segment of one unit once asked for (Falcon's
    # grouped[..., -2, :] picks each group's key head); the other units keep moving.
    if not (0 <= lo < size and _slice_axis(c.units, x.axes[dim], lo, lo + 1, 1, size) is not None):
        c.fix(x.axes[dim], "indexing along a unit axis")
    return AbstractTensor(x.axes[:dim] + x.axes[dim + 1:])


@builtin("index")
def index(c: Call):
    """ATen advanced indexing: ``indices`` is a list with None for untouched axes."""
    x = c.input()
    indices = c.arg("indices", 1)
    if x is None or not isinstance(indices, (list, tuple)):
        return NotImplemented
    return index_tensor(c, x, tuple(slice(None) if i is None else i for i in indices))


@builtin("unbind", any_shape=True)
def unbind(c: Call):
    """``x.unbind(dim)``: every position along ``dim`` as its own tensor (timm's attention takes
    q, k and v out of ``qkv.reshape(B, N, 3, heads, head_dim)`` this way). The positions are
    picked by index, so that axis stays fixed; the other axes pass through, each output carrying
    them alike (q, k and v share their heads' and within-head permutations)."""
    x, out_shapes = c.input(), c.out_shape
    if x is None or not isinstance(out_shapes, list):
        return NotImplemented
    dim = norm_dim(int(c.arg("dim", 1, 0)), len(x.axes))
    rest = x.axes[:dim] + x.axes[dim + 1:]
    if any(len(s) != len(rest) for s in out_shapes):
        return NotImplemented
    c.fix(x.axes[dim], SELECTOR)
    return [AbstractTensor(list(rest)) for _ in out_shapes]


@builtin("roll")
def roll(c: Call):
    """``torch.roll(x, shifts, dims)``: positions along the rolled axes move (timm's Swin shifts its
    windows over the spatial axes), so those stay fixed; the others pass through. A roll of the
    flattened tensor (no ``dims``) fixes everything."""
    x = c.input()
    dims = c.arg("dims", 2, None)
    if x is None or dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return NotImplemented
    for d in dims if isinstance(dims, (list, tuple)) else [dims]:
        c.fix(x.axes[norm_dim(int(d), len(x.axes))], "a roll along a unit axis")
    return AbstractTensor(list(x.axes))

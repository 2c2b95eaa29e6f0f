"""Built-in rules: elementwise operations, layers, normalisations, concatenation, reductions,
matrix products and pooling. Every rule is equivariant: permuting the units it ties the same way
on every tensor that carries them leaves its output permuted the same way.

Rules read arguments by name or position, so torch.fx graphs (modules, functionals, methods) and
torch.export graphs (ATen operators, arguments named by their schema) share them.
"""

from __future__ import annotations

import math

from rebasin_rs.torch.infer._graph import INPUT, SPATIAL, AbstractTensor, ParamRef, UnitGraph, outer_of
from rebasin_rs.torch.infer._registry import Call, builtin

UNARY = set(
    """relu relu_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardswish_ hardsigmoid
    hardsigmoid_ hardtanh hardtanh_ relu6 leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_ softplus
    mish mish_ logsigmoid softsign tanhshrink dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
    feature_alpha_dropout stochastic_depth contiguous clone detach float half bfloat16 double to type
    type_as neg abs exp log sqrt rsqrt square sin cos erf sign clamp clamp_ clip clamp_min clamp_max
    softmax log_softmax _softmax _log_softmax identity native_dropout alias lift_fresh_copy
    _to_copy requires_grad_""".split()
)
BINARY = set(
    """add add_ sub sub_ mul mul_ div div_ truediv true_divide iadd isub imul itruediv rsub maximum
    minimum where pow pow_ addcmul lerp masked_fill masked_fill_""".split()
)
# Operations that only change the dtype, the memory or nothing at all (in eval mode).
CAST = set("""to type type_as float half bfloat16 double contiguous clone detach detach_ _to_copy alias lift_fresh_copy
    requires_grad_ dropout dropout_ native_dropout alpha_dropout feature_alpha_dropout stochastic_depth
    dropout1d dropout2d dropout3d""".split())
SOFTMAX = {"softmax", "log_softmax", "_softmax", "_log_softmax"}
REDUCE = set("mean sum amax amin prod std var logsumexp norm nansum nanmean".split())
SHAPE_ONLY = set("""size dim numel shape dtype device is_floating_point is_contiguous ndim _assert_tensor_metadata
    _assert_async _assert_scalar sym_size sym_numel sym_stride sym_constrain_range
    sym_constrain_range_for_size""".split())
# Pooling, resampling and padding: only the spatial axes mix. "pool1d/2d/3d" are the pooling and
# padding modules read as operations.
POOL = {f"{p}pool{k}d" for k in (1, 2, 3) for p in (
    "", "avg_", "max_", "_max_", "lp_", "adaptive_avg_", "_adaptive_avg_", "adaptive_max_", "_adaptive_max_",
    "fractional_max_", "_fractional_max_", "max_un", "mkldnn_max_", "mkldnn_adaptive_avg_", "quantized_max_")}
RESAMPLE = {"interpolate", "upsample", "upsample_nearest2d", "upsample_bilinear2d", "pad", "constant_pad_nd"}


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def tensors_of(c: Call) -> list:
    return [v for v in c.values() if isinstance(v, (AbstractTensor, ParamRef))]


def elementwise(units: UnitGraph, operands: list, out_shape: tuple) -> AbstractTensor:
    """Broadcasting elementwise op: axes aligned from the right are tied where both are > 1."""
    nd = len(out_shape)
    out: list = [None] * nd
    for x in operands:
        x = units.as_tensor(x)
        if not isinstance(x, AbstractTensor):
            continue
        off = nd - len(x.axes)
        for k, ax in enumerate(x.axes):
            if units.size(ax) == 1 and out_shape[off + k] != 1:
                continue
            out[off + k] = ax if out[off + k] is None else units.unify(out[off + k], ax)
    for k in range(nd):
        if out[k] is None:
            # Broadcast from size 1 on every operand: equal values along the axis, free.
            out[k] = units.axis(out_shape[k], key=("broadcast", k))
    return AbstractTensor(out)


@builtin(*SHAPE_ONLY, any_shape=True)
def shape_only(c: Call):
    return None


@builtin("getattr", any_shape=True)
def getattr_(c: Call):
    return None if c.arg("name", 1) in SHAPE_ONLY else NotImplemented


@builtin(*CAST)
def cast(c: Call):
    x = c.input()
    if x is None or len(x.axes) != len(c.out_shape):
        return NotImplemented
    return AbstractTensor(list(x.axes), x.value)


@builtin(*(UNARY - CAST))
def unary(c: Call):
    x = c.input()
    if x is None or len(x.axes) != len(c.out_shape):
        return NotImplemented
    tensors = tensors_of(c)
    if c.op in SOFTMAX or len(tensors) == 1:
        return AbstractTensor(list(x.axes))
    return elementwise(c.units, tensors, c.out_shape)


@builtin(*BINARY)
def binary(c: Call):
    c.input()  # parameters are bound in argument order, the first one first
    return elementwise(c.units, tensors_of(c), c.out_shape)


@builtin("max", "min")
def max_min(c: Call):
    """``torch.max(a, b)`` of two tensors is elementwise (OPT clamps its attention scores this
    way); a reduction along a dimension is not handled here."""
    tensors = tensors_of(c)
    if len(tensors) != 2 or c.arg("dim", None) is not None:
        return NotImplemented
    c.input()
    return elementwise(c.units, tensors, c.out_shape)


@builtin("expand", "expand_as", "broadcast_to")
def expand(c: Call):
    x = c.input()
    return NotImplemented if x is None else elementwise(c.units, [x], c.out_shape)


@builtin("linear")
def linear(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    out = c.new_units(c.out_shape[-1])
    c.bind(c.arg("weight", 1), [out, x.axes[-1]], contract=(1,))
    c.bind(c.arg("bias", 2), [out])
    return AbstractTensor(x.axes[:-1] + [out])


@builtin("batch_norm", "instance_norm")
def batch_norm(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    ch = [x.axes[1]] if len(x.axes) > 1 else [x.axes[0]]
    for name, pos in (("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4)):
        c.bind(c.arg(name, pos), ch)
    return x


@builtin("layer_norm")
def layer_norm(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    ns = c.arg("normalized_shape", 1)
    k = 1 if isinstance(ns, int) else len(ns)
    for name, pos in (("weight", 2), ("bias", 3)):
        c.bind(c.arg(name, pos), x.axes[-k:])
    return x


@builtin("embedding")
def embedding(c: Call):
    units = c.units
    idx = c.tensor(c.arg("input", 0, c.arg("indices")))
    w = c.arg("weight", 1)
    out = c.new_units(c.out_shape[-1])
    c.bind(w, [c.fixed_axis(w.shape[0] if isinstance(w, ParamRef) else c.out_shape[-1], INPUT), out])
    axes = list(idx.axes) if isinstance(idx, AbstractTensor) else [units.axis(d) for d in c.out_shape[:-1]]
    return AbstractTensor(axes + [out])


@builtin("prelu")
def prelu(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    w = c.arg("weight", 1)
    if isinstance(w, ParamRef) and math.prod(w.shape) > 1:
        c.bind(w, [x.axes[1]])
    return AbstractTensor(list(x.axes))


@builtin("cat", "concat", "concatenate")
def cat(c: Call):
    """Concatenation: the joined axis holds the operands' segments one after the other."""
    units, out_shape = c.units, c.out_shape
    ts = [units.as_tensor(t) for t in c.arg("tensors", 0)]
    ts = [t for t in ts if isinstance(t, AbstractTensor)]
    d = norm_dim(int(c.arg("dim", 1, 0)), len(out_shape))
    ts = [t for t in ts if len(t.axes) == len(out_shape) and units.size(t.axes[d]) > 0]
    if not ts or any(outer_of(t.axes[d]) for t in ts):
        return NotImplemented  # woven axes side by side: not one woven axis
    out = []
    for k in range(len(out_shape)):
        if k == d:
            out.append(tuple(seg for t in ts for seg in t.axes[k]))
        else:
            ax = ts[0].axes[k]
            for t in ts[1:]:
                ax = units.unify(ax, t.axes[k])
            out.append(ax)
    if units.size(out[d]) != out_shape[d]:
        return NotImplemented
    return AbstractTensor(out)


@builtin("stack")
def stack(c: Call):
    """``torch.stack(tensors, dim)``: the operands' axes are tied one to one (a position of the
    new axis picks an operand, with the same units); the new axis stays fixed."""
    units, out_shape = c.units, c.out_shape
    ts = [units.as_tensor(t) for t in c.arg("tensors", 0)]
    if not ts or not all(isinstance(t, AbstractTensor) and len(t.axes) == len(out_shape) - 1 for t in ts):
        return NotImplemented
    d = norm_dim(int(c.arg("dim", 1, 0)), len(out_shape))
    axes = list(ts[0].axes)
    for t in ts[1:]:
        axes = [units.unify(a, b) for a, b in zip(axes, t.axes)]
    return AbstractTensor(axes[:d] + [c.fixed_axis(len(ts), "operands stacked")] + axes[d:])


@builtin(*REDUCE)
def reduce(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    dim = c.arg("dim", 1)
    keep = bool(c.arg("keepdim", 2, False))
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return AbstractTensor([((),)] * len(c.out_shape))
    if not isinstance(dim, (int, list, tuple)):
        return NotImplemented
    dims = {norm_dim(int(d), len(x.axes)) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    # A sum or mean over an axis does not depend on the order of its units.
    out = [((),) if k in dims else ax for k, ax in enumerate(x.axes) if keep or k not in dims]
    if len(out) != len(c.out_shape):
        return NotImplemented
    return AbstractTensor(out)


@builtin("matmul", "mm", "bmm")
def matmul(c: Call):
    x = c.input()
    if x is None or len(tensors_of(c)) != 2:
        return NotImplemented
    units = c.units
    other = c.arg("other", 1, c.arg("mat2"))
    y = units.as_tensor(other)
    if not (isinstance(y, AbstractTensor) and len(x.axes) >= 2 and len(y.axes) >= 2):
        return NotImplemented
    units.unify(x.axes[-1], y.axes[-2])
    batch = elementwise(units, [AbstractTensor(x.axes[:-2]), AbstractTensor(y.axes[:-2])], tuple(c.out_shape[:-2]))
    if isinstance(other, ParamRef):
        units.contracted.add((other.name, len(other.shape) - 2))
    if isinstance(other, ParamRef) or units.is_param_axis(y.axes[-1]):
        # A layer written as a product with its weight (``x @ self.weight.T`` in Falcon's
        # Linear): its outputs are hidden units like nn.Linear's.
        units.producers.append(y.axes[-1])
    return AbstractTensor(batch.axes + [x.axes[-2], y.axes[-1]])


@builtin("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones", "new_full")
def uniform(c: Call):
    """A tensor of one value everywhere (T5's zero position bias of cross-attention): any
    permutation of its axes leaves it as it is, so they follow whatever axes they meet."""
    shape = c.out_shape
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) for d in shape):
        return NotImplemented
    return AbstractTensor([c.units.axis(d, key=("uniform", k)) for k, d in enumerate(shape)])


@builtin("baddbmm")
def baddbmm(c: Call):
    """``beta * input + alpha * (batch1 @ batch2)``: BLOOM adds its ALiBi position bias to the
    attention scores this way. The bias follows the scores' axes (heads included, so heads whose
    slopes are fixed by position stay fixed)."""
    units = c.units
    b1, b2 = (units.as_tensor(c.arg(n, k)) for k, n in ((1, "batch1"), (2, "batch2")))
    if not all(isinstance(t, AbstractTensor) and len(t.axes) == 3 for t in (b1, b2)):
        return NotImplemented
    units.unify(b1.axes[2], b2.axes[1])
    batch = elementwise(units, [AbstractTensor(b1.axes[:1]), AbstractTensor(b2.axes[:1])], tuple(c.out_shape[:1]))
    scores = AbstractTensor(batch.axes + [b1.axes[1], b2.axes[2]])
    return elementwise(units, [scores, c.arg("input", 0)], c.out_shape)


def spatial(c: Call, x: AbstractTensor, k: int) -> AbstractTensor:
    """Pooling-like: the last ``k`` axes mix, the others (batch, channels) pass through."""
    for ax in x.axes[len(x.axes) - k:]:
        c.fix(ax, SPATIAL)
    out_shape = c.out_shape
    return AbstractTensor(x.axes[: len(x.axes) - k] + [c.fixed_axis(d, SPATIAL) for d in out_shape[len(out_shape) - k:]])


@builtin(*POOL, *RESAMPLE)
def pool(c: Call):
    x = c.input()
    if x is None or c.arg("return_indices", None):
        return NotImplemented
    op, nd = c.op, len(x.axes)
    if op in ("pad", "constant_pad_nd"):
        return _pad(c, x)
    k = 3 if "3d" in op else 1 if "1d" in op else 2
    if op in ("interpolate", "upsample"):
        k = len(c.out_shape) - 2
    if nd != len(c.out_shape) or k >= nd:
        return NotImplemented
    return spatial(c, x, k)


def _pad(c: Call, x: AbstractTensor) -> AbstractTensor:
    """``F.pad``: the padded axes (pairs from the last axis backwards) grow and shift, so they stay
    fixed; an axis padded by (0, 0) passes through (timm's Swin pads (B, H, W, C) as
    ``(0, 0, 0, pad_w, 0, pad_h)``, its channels untouched)."""
    pads = c.arg("pad", 1, ())
    nd = len(x.axes)
    if not isinstance(pads, (list, tuple)) or len(pads) % 2 or len(pads) // 2 > nd or nd != len(c.out_shape):
        return NotImplemented
    out = list(x.axes)
    for i in range(len(pads) // 2):
        k = nd - 1 - i
        if pads[2 * i] or pads[2 * i + 1]:
            c.fix(x.axes[k], SPATIAL)
            out[k] = c.fixed_axis(c.out_shape[k], SPATIAL)
    return AbstractTensor(out)


@builtin("normalize")
def normalize(c: Call):
    """``F.normalize(x, p, dim)``: each slice along ``dim`` divided by its norm, which does not
    depend on the order of its entries (EdgeNeXt's cross-covariance attention normalises q and k
    over the tokens): every axis passes through."""
    x = c.input()
    if x is None or len(x.axes) != len(c.out_shape):
        return NotImplemented
    return AbstractTensor(list(x.axes))

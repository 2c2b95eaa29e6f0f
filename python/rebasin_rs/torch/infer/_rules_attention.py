"""Built-in rules for attention: scaled dot-product attention, Hugging Face's Conv1D (addmm),
nn.MultiheadAttention and torchvision's Swin blocks.

Per layer one head permutation is shared by q, k, v and the output projection; q and k share a
within-head permutation, v and the output projection another."""

from __future__ import annotations

from rebasin_rs.torch.infer._graph import SPATIAL, AbstractTensor, ParamRef, outer_of
from rebasin_rs.torch.infer._registry import Call, builtin
from rebasin_rs.torch.infer._rules import elementwise


@builtin("addmm")
def addmm(c: Call):
    """bias + mat1 @ mat2 (Hugging Face's Conv1D, whose weight is stored (in, out))."""
    units = c.units
    m1, w = c.tensor(c.arg("mat1", 1)), c.arg("mat2", 2)
    if not isinstance(m1, AbstractTensor) or len(m1.axes) != 2:
        return NotImplemented
    if isinstance(w, ParamRef):
        out = c.new_units(w.shape[1])
        c.bind(w, [m1.axes[1], out], contract=(0,))
    else:
        w = c.tensor(w)
        if not isinstance(w, AbstractTensor) or len(w.axes) != 2:
            return NotImplemented
        c.tie(m1.axes[1], w.axes[0])
        out = w.axes[1]
    return elementwise(units, [AbstractTensor([m1.axes[0], out]), c.arg("input", 0)], c.out_shape)


@builtin("scaled_dot_product_attention")
def sdpa(c: Call):
    """scaled_dot_product_attention(q, k, v, mask): q and k share their last axis (within-head
    units), k and v their sequence axis, and all three their leading axes (batch, heads)."""
    units, out_shape = c.units, c.out_shape
    q, k, v = (c.tensor(c.arg(n, i)) for i, n in enumerate(("query", "key", "value")))
    if not all(isinstance(t, AbstractTensor) and len(t.axes) >= 2 for t in (q, k, v)):
        return NotImplemented
    batch_shape = tuple(out_shape[:-2])
    if any(len(t.axes) - 2 != len(batch_shape) for t in (q, k, v)):
        return NotImplemented
    if any(units.size(ax) not in (1, d) for t in (k, v) for ax, d in zip(t.axes[:-2], batch_shape)):
        return NotImplemented  # grouped-query attention inside the kernel (enable_gqa): not expressible
    c.tie(q.axes[-1], k.axes[-1])
    c.tie(k.axes[-2], v.axes[-2])
    batch = elementwise(units, [AbstractTensor(q.axes[:-2]), AbstractTensor(k.axes[:-2]), AbstractTensor(v.axes[:-2])],
                        batch_shape)
    mask = c.arg("attn_mask", 3)
    if isinstance(mask, (AbstractTensor, ParamRef)):
        scores = AbstractTensor(batch.axes + [q.axes[-2], k.axes[-2]])
        shape = batch_shape + (units.size(q.axes[-2]), units.size(k.axes[-2]))
        elementwise(units, [scores, mask], shape)
    return AbstractTensor(batch.axes + [q.axes[-2], v.axes[-1]])


def _heads(c: Call, heads: int, dim: int) -> tuple | None:
    """Factors of an attention layer's head, query/key within-head and value within-head units
    (each a tuple of factors, empty for a size of 1)."""
    units = c.units
    parts = [units.axis(heads, key="heads"), units.axis(dim, key="qk"), units.axis(dim, key="v")]
    if any(len(ax) != 1 for ax in parts):
        return None
    return tuple(ax[0] for ax in parts)


@builtin("shifted_window_attention")
def swin_attention(c: Call):
    """torchvision's shifted_window_attention(input (..., C), qkv_weight, proj_weight,
    relative_position_bias (1, heads, N, N), window_size, num_heads, shift_size, ...)."""
    names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale")
    arg = {n: c.arg(n, i) for i, n in enumerate(names)}
    x = c.input()
    if x is None or arg["logit_scale"] is not None:
        return NotImplemented
    heads = int(arg["num_heads"])
    parts = _heads(c, heads, c.size(x.axes[-1]) // heads)
    if parts is None:
        return NotImplemented
    head, qk, v = parts
    head_qk, head_v = head + qk, head + v
    c.bind(arg["qkv_weight"], [(head_qk, head_qk, head_v), x.axes[-1]])
    c.bind(arg["qkv_bias"], [(head_qk, head_qk, head_v)])
    out = c.units.axis(c.out_shape[-1], key="out")
    c.bind(arg["proj_weight"], [out, (head_v,)])
    c.bind(arg["proj_bias"], [out])
    bias = c.tensor(arg["relative_position_bias"])
    if isinstance(bias, AbstractTensor) and len(bias.axes) == 4:
        c.tie(bias.axes[1], (head,))
        c.units.fix_axes(bias.axes[2:], SPATIAL)
    c.units.producers += [(head_qk,), (head_v,), out]
    c.units.fix_axes(x.axes[-3:-1], SPATIAL)  # windows are shifted along the spatial axes
    return AbstractTensor(x.axes[:-1] + [out])


@builtin("_patch_merging_pad")
def patch_merging_pad(c: Call):
    """torchvision Swin's patch merging: pads (..., H, W, C) and concatenates its four 2x2
    interleaved sub-grids along the channels: the channel axis is C's units four times."""
    x = c.input()
    if x is None or c.size(x.axes[-1]) * 4 != c.out_shape[-1] or outer_of(x.axes[-1]):
        return NotImplemented  # four woven axes side by side are not one woven axis
    c.units.fix_axes(x.axes[-3:-1], SPATIAL)
    channels = tuple(x.axes[-1]) * 4
    return AbstractTensor(x.axes[:-3] + [c.fixed_axis(d, SPATIAL) for d in c.out_shape[-3:-1]] + [channels])


@builtin("_get_relative_position_bias")
def relative_position_bias(c: Call):
    """torchvision Swin: table (M, heads) -> (1, heads, N, N)."""
    table = c.input()
    if table is None or len(table.axes) != 2 or len(c.out_shape) != 4:
        return NotImplemented
    c.fix(table.axes[0], SPATIAL)
    return AbstractTensor([((),), table.axes[1]] + [c.fixed_axis(d, SPATIAL) for d in c.out_shape[2:]])


@builtin("multi_head_attention", any_shape=True)
def multi_head_attention(c: Call):
    """nn.MultiheadAttention (read by its module rule): heads and within-head units inside its
    fused in-projection."""
    m, out_shapes = c.module, c.out_shape
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        return NotImplemented
    q, k, v = (c.tensor(t) for t in c.args[:3])
    if not all(isinstance(t, AbstractTensor) for t in (q, k, v)) or not isinstance(out_shapes, list):
        return NotImplemented
    e = c.tie(c.tie(q.axes[-1], k.axes[-1]), v.axes[-1])
    parts = _heads(c, m.num_heads, m.head_dim)
    if parts is None:
        return NotImplemented
    head, qk, vv = parts
    head_qk, head_v = head + qk, head + vv
    inner = (head_qk, head_qk, head_v)  # q, k and v side by side in the fused projection
    c.bind("in_proj_weight", [inner, e])
    c.bind("in_proj_bias", [inner])
    out = c.units.axis(m.embed_dim, key="out")
    c.bind("out_proj.weight", [out, (head_v,)])
    c.bind("out_proj.bias", [out])
    c.units.producers += [(head_qk,), (head_v,), out]
    batched = len(q.axes) == 3
    seq, batch = (1, 0) if m.batch_first else (0, 1)
    if batched:  # tie the batch axes of query, key and value
        c.tie(c.tie(q.axes[batch], k.axes[batch]), v.axes[batch])
    s = seq if batched else -2
    c.tie(k.axes[s], v.axes[s])
    result = [AbstractTensor(q.axes[:-1] + [out])]
    w = out_shapes[1] if len(out_shapes) > 1 else None
    if isinstance(w, tuple):
        lead = [q.axes[batch]] if batched else []
        mid = [(head,)] if len(w) == len(lead) + 3 else []  # per-head weights keep the head axis
        result.append(AbstractTensor(lead + mid + [q.axes[s], k.axes[s]]))
    else:
        result.append(None)
    return result

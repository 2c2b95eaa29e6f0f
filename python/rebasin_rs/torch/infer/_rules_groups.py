"""Built-in rules for layers whose channels come in groups: convolutions (plain, depthwise and
grouped) and group normalisation.

A grouped convolution's output channel ``(g, o)`` reads only the input channels ``(g, i)`` of its
own group, so its channel axes are viewed as (groups, channels per group): the groups move as
blocks (one permutation of the groups, shared by the input and the output) and the channels move
within their group (one permutation of the positions inside a group, shared by all groups; the
input's and the output's are separate). This is the structure of attention's (heads, within-head)
axes, and the engine solves it the same way. GroupNorm's statistics are shared within a group of
consecutive channels: the same two factors keep them.
"""

from __future__ import annotations

from rebasin_rs.torch.infer._graph import SPATIAL, AbstractTensor, Axis, ParamRef, outer_of
from rebasin_rs.torch.infer._registry import Call, builtin
from rebasin_rs.torch.infer._rules_views import _split


def _in_groups(c: Call, ax: Axis, groups: int) -> list | None:
    """Channel axis ``ax`` viewed as (groups, channels per group): ``[group axis, within axis]``,
    each one segment; None where it is not (yet) laid out that way (the graph is then asked to
    create the channels split on its next pass, where it can)."""
    size = c.size(ax)
    if groups < 1 or size % groups or len(ax) != 1 or outer_of(ax):
        return None
    parts = _split(c.units, ax, [groups, size // groups])
    if parts is None or any(len(p) != 1 or outer_of(p) for p in parts):
        return None
    return parts


def _conv(c: Call, transposed: bool) -> AbstractTensor:
    units = c.units
    x = c.input()
    if x is None:
        return NotImplemented
    w, b = c.arg("weight", 1), c.arg("bias", 2)
    groups = int(c.arg("groups", 6, 1))
    wshape = w.shape if isinstance(w, ParamRef) else tuple(units.size(ax) for ax in units.as_tensor(w).axes)
    k = len(wshape) - 2
    ch = len(x.axes) - k - 1
    for ax in x.axes[ch + 1:]:
        c.fix(ax, SPATIAL)
    spatial_out = [c.fixed_axis(d, SPATIAL) for d in c.out_shape[ch + 1:]]
    kernel = [c.fixed_axis(d, SPATIAL) for d in wshape[2:]]
    cin, cout = units.size(x.axes[ch]), c.out_shape[ch]
    if groups == 1:
        out = c.new_units(cout)
        c.bind(w, ([x.axes[ch], out] if transposed else [out, x.axes[ch]]) + kernel, contract=(int(not transposed),))
    elif groups == cin == cout:
        # Depthwise: each channel is its own group; its units are the input's.
        out = x.axes[ch]
        c.bind(w, [out, units.axis(1)] + kernel)
    else:
        parts = _in_groups(c, x.axes[ch], groups) if cout % groups == 0 else None
        if parts is None:
            why = f"grouped convolution (groups={groups})"
            c.fix(x.axes[ch], why)
            out = c.fixed_axis(cout, why)
            c.bind(w, [c.fixed_axis(d, why) for d in wshape[:2]] + kernel)
        else:
            g_ax, in_ax = parts
            within = units.axis(cout // groups, key="out in group")
            if len(within) != 1 or outer_of(within):
                why = "a grouped convolution's channels split another way"
                c.fix(x.axes[ch], why)
                c.fix(within, why)
                out = c.fixed_axis(cout, why)
                c.bind(w, [c.fixed_axis(d, why) for d in wshape[:2]] + kernel)
            else:
                out = (g_ax[0] + within[0],)
                units.kinds.update({f: "groups" for f in g_ax[0]})
                units.kinds.update({f: "within-group" for f in in_ax[0] + within[0]})
                c.bind(w, ([x.axes[ch], within] if transposed else [out, in_ax]) + kernel,
                       contract=(int(not transposed),))
        units.producers.append(out)
    c.bind(b, [out])
    return AbstractTensor(x.axes[:ch] + [out] + spatial_out)


@builtin("conv1d", "conv2d", "conv3d")
def conv(c: Call):
    return _conv(c, transposed=False)


@builtin("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(c: Call):
    # F.conv_transpose*d has groups at position 6 too (after output_padding, before dilation).
    return _conv(c, transposed=True)


@builtin("convolution")
def convolution(c: Call):
    """ATen's generic form: every argument named."""
    c.kwargs["groups"] = c.arg("groups", None, 1)
    c.args = ()
    return _conv(c, transposed=bool(c.arg("transposed", None, False)))


@builtin("group_norm")
def group_norm(c: Call):
    x = c.input()
    if x is None:
        return NotImplemented
    groups = int(c.arg("num_groups", 1, 1))
    if groups not in (1, c.size(x.axes[1])):
        parts = _in_groups(c, x.axes[1], groups)
        if parts is None:
            # Statistics are shared within a group of channels: only the groups as blocks and
            # the positions inside a group may move, and the channels are not laid out that way
            # (yet: the next pass creates them split where it can).
            c.fix(x.axes[1], f"GroupNorm with {groups} groups of channels")
        else:
            c.units.kinds.update({f: "groups" for f in parts[0][0]})
            c.units.kinds.update({f: "within-group" for f in parts[1][0]})
    for name, pos in (("weight", 2), ("bias", 3)):
        c.bind(c.arg(name, pos), [x.axes[1]])
    return x

"""Built-in rules for torch.nn's leaf modules: each reads the module call as the operation it
computes, with the module's parameters as arguments, and runs that operation's rule."""

from __future__ import annotations

from torch import nn

from rebasin_rs.torch.infer._registry import Call, builtin

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.LogSigmoid, nn.Softsign, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Tanhshrink,
)
# Pooling and padding modules by the number of spatial axes they mix (any padding mode pads along
# the spatial axes only).
SPATIAL_MODULES = {
    getattr(nn, name): int(name[-2])
    for name in dir(nn)
    if name.endswith(("Pool1d", "Pool2d", "Pool3d", "Pad1d", "Pad2d", "Pad3d"))
}


def _x(c: Call):
    return c.args[0] if c.args else c.kwargs.get("input")


@builtin(nn.Linear, any_shape=True)
def linear_module(c: Call):
    return c.delegate("linear", (_x(c), c.param("weight"), c.param("bias")))


@builtin(nn.Conv1d, nn.Conv2d, nn.Conv3d, any_shape=True)
def conv_module(c: Call):
    return c.delegate("conv2d", (_x(c), c.param("weight"), c.param("bias")), {"groups": c.module.groups})


@builtin(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, any_shape=True)
def conv_transpose_module(c: Call):
    return c.delegate("conv_transpose2d", (_x(c), c.param("weight"), c.param("bias")), {"groups": c.module.groups})


@builtin(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, any_shape=True)
def batch_norm_module(c: Call):
    names = ("running_mean", "running_var", "weight", "bias")
    return c.delegate("batch_norm", (_x(c),) + tuple(c.param(n) for n in names))


@builtin(nn.LayerNorm, any_shape=True)
def layer_norm_module(c: Call):
    m = c.module
    return c.delegate("layer_norm", (_x(c), tuple(m.normalized_shape), c.param("weight"), c.param("bias")))


@builtin(nn.GroupNorm, any_shape=True)
def group_norm_module(c: Call):
    return c.delegate("group_norm", (_x(c), c.module.num_groups, c.param("weight"), c.param("bias")))


@builtin(nn.Embedding, any_shape=True)
def embedding_module(c: Call):
    return c.delegate("embedding", (_x(c), c.param("weight")))


@builtin(nn.PReLU, any_shape=True)
def prelu_module(c: Call):
    return c.delegate("prelu", (_x(c), c.param("weight")))


@builtin(*ACTIVATIONS, any_shape=True)
def activation_module(c: Call):
    return c.delegate("relu", (_x(c),))


@builtin(nn.Flatten, nn.Unflatten, any_shape=True)
def flatten_module(c: Call):
    return c.delegate("flatten", (_x(c),))


@builtin(nn.Upsample, any_shape=True)
def upsample_module(c: Call):
    return c.delegate("interpolate", (_x(c),))


@builtin(*SPATIAL_MODULES, any_shape=True)
def spatial_module(c: Call):
    if getattr(c.module, "return_indices", False):
        return NotImplemented
    k = next(SPATIAL_MODULES[t] for t in type(c.module).__mro__ if t in SPATIAL_MODULES)
    return c.delegate(f"pool{k}d", (_x(c),))


@builtin(nn.MultiheadAttention, any_shape=True)
def multi_head_attention_module(c: Call):
    x = _x(c)
    k = c.args[1] if len(c.args) > 1 else c.kwargs.get("key", x)
    v = c.args[2] if len(c.args) > 2 else c.kwargs.get("value", k)
    return c.delegate("multi_head_attention", (x, k, v))

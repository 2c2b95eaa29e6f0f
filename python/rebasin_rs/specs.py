"""Permutation specs of the paper's architectures, in PyTorch layout and naming.

Each builder returns a :class:`~rebasin_rs.PermutationSpec`; sizes come from the parameters, so a
builder fits any width (ResNet-20 x4 uses the same names as x1). BatchNorm layers contribute
``weight``, ``bias``, ``running_mean`` and ``running_var``; residual connections tie the
permutation of every block output of a stage.

Example:
    >>> import rebasin_rs as rb
    >>> spec = rb.specs.resnet20()
    >>> "P_layer1.0.inner" in spec.groups, "P_stage1" in spec.groups
    (True, True)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rebasin_rs._errors import RebasinError
from rebasin_rs._matching import check_int
from rebasin_rs._spec import PermutationSpec

__all__ = ["mlp", "resnet20", "resnet50", "vgg16"]

_BN = ("weight", "bias", "running_mean", "running_var")


def _names(value: object, what: str, *, least: int, optional: bool = False) -> list:
    """``value`` as a list of distinct module names (``None`` entries allowed when ``optional``).
    A bare string would otherwise be read letter by letter, and an int or a repeated name would
    build a spec of modules that do not exist."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list of module names, got {type(value).__name__} {value!r}")
    names = list(value)
    for name in names:
        if not (isinstance(name, str) and name) and not (optional and name is None):
            raise TypeError(f"{what} must hold module names (non-empty strings), got {name!r}")
    given = [n for n in names if n is not None]
    if len(set(given)) != len(given):
        raise RebasinError(f"{what} names a module twice: {names!r}")
    if len(names) < least:
        raise RebasinError(f"{what} must name at least {least} modules, got {names!r}")
    return names


def _ints(value: object, what: str, *, least: int, low: int) -> list[int]:
    """``value`` as a list of at least ``least`` ints, each at least ``low`` (blocks per stage,
    layer indices)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list of ints, got {type(value).__name__} {value!r}")
    if len(value) < least:
        raise RebasinError(f"{what} must have at least {least} entries, got {list(value)!r}")
    return [check_int(v, what, low=low) for v in value]


class _Builder:
    def __init__(self, bn_stats: bool) -> None:
        self.groups: dict[str, list[tuple[str, int]]] = {}
        self.views: dict[str, tuple[int, ...]] = {}
        self.bn_fields = _BN if bn_stats else _BN[:2]

    def out(self, g: str, module: str, bias: bool = False) -> None:
        """Output units of a Linear/Conv module."""
        self.groups.setdefault(g, []).append((f"{module}.weight", 0))
        if bias:
            self.groups[g].append((f"{module}.bias", 0))

    def inp(self, g: str, module: str) -> None:
        """Input units of a Linear/Conv module."""
        self.groups.setdefault(g, []).append((f"{module}.weight", 1))

    def bn(self, g: str, module: str) -> None:
        for f in self.bn_fields:
            self.groups.setdefault(g, []).append((f"{module}.{f}", 0))

    def spec(self) -> PermutationSpec:
        return PermutationSpec({k: tuple(v) for k, v in self.groups.items()}, views=self.views)


def mlp(layers: Sequence[str], *, bias: bool = True, norms: Sequence[str] | None = None,
        bn_stats: bool = False) -> PermutationSpec:
    """A multilayer perceptron: Linear modules ``layers`` in order; the outputs of every layer but
    the last are permuted (group ``P_<layer>``).

    Args:
        layers: Module names of the Linear layers, e.g. ``["fc1", "fc2", "fc3"]`` or
            ``["layers.0", "layers.2", "layers.4"]`` for an ``nn.Sequential``.
        bias: The layers have biases.
        norms: Optional module names of a normalisation after each hidden layer (``None`` entries
            for none), whose ``weight`` and ``bias`` follow the layer's units.
        bn_stats: The norms are BatchNorm and their running statistics are permuted too.
    """
    layers = _names(layers, "mlp: layers", least=2)
    if norms is not None:
        norms = _names(norms, "mlp: norms", least=0, optional=True)
        if len(norms) != len(layers) - 1:
            raise RebasinError(f"mlp: norms must have one entry per hidden layer ({len(layers) - 1}), "
                               f"got {len(norms)}")
        if set(norms) & set(layers):
            raise RebasinError(f"mlp: norms and layers name the same module: {sorted(set(norms) & set(layers))}")
    b = _Builder(bn_stats)
    for k, (layer, nxt) in enumerate(zip(layers[:-1], layers[1:])):
        g = f"P_{layer}"
        b.out(g, layer, bias)
        if norms is not None and norms[k] is not None:
            b.bn(g, norms[k])
        b.inp(g, nxt)
    return b.spec()


def vgg16(*, bn: bool = False, classifier: Sequence[int] = (0, 3, 6), spatial: int = 7,
          channels: int = 512, bn_stats: bool = True) -> PermutationSpec:
    """torchvision's ``vgg16`` / ``vgg16_bn`` (``features.*`` and ``classifier.*``).

    Args:
        bn: BatchNorm after every convolution (``vgg16_bn``).
        classifier: Indices of the Linear layers in ``classifier``.
        spatial: Side of the feature map that is flattened into the first Linear layer (7 for
            torchvision at 224x224 with its adaptive pooling; 1 for CIFAR-style VGG on 32x32).
            The first Linear layer's input is viewed as ``(out, channels, spatial, spatial)`` so
            that each channel's block of inputs moves with it.
        channels: Channels of the last convolution (512 in VGG16; smaller in narrow variants).
        bn_stats: Permute BatchNorm running statistics.
    """
    classifier = _ints(classifier, "vgg16: classifier", least=1, low=0)
    if sorted(set(classifier)) != classifier:
        raise RebasinError(f"vgg16: classifier must be increasing indices, got {classifier!r}")
    spatial = check_int(spatial, "vgg16: spatial", low=1)
    channels = check_int(channels, "vgg16: channels", low=1)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    b = _Builder(bn_stats)
    idx = 0
    convs = []
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        convs.append(idx)
        idx += 3 if bn else 2
    prev = None
    for i in convs:
        g = f"P_features.{i}"
        b.out(g, f"features.{i}", bias=True)
        if bn:
            b.bn(g, f"features.{i + 1}")
        if prev is not None:
            b.inp(prev, f"features.{i}")
        prev = g
    first = f"classifier.{classifier[0]}"
    b.inp(prev, first)
    b.views[f"{first}.weight"] = (-1, channels, spatial, spatial)
    for layer, nxt in zip(classifier[:-1], classifier[1:]):
        g = f"P_classifier.{layer}"
        b.out(g, f"classifier.{layer}", bias=True)
        b.inp(g, f"classifier.{nxt}")
    return b.spec()


def resnet20(*, blocks: int = 3, head: str = "linear", bn_stats: bool = True) -> PermutationSpec:
    """The CIFAR ResNet-20 of the paper (any width multiplier): ``conv1``/``bn1``, three stages
    ``layer1..3`` of ``blocks`` BasicBlocks (``conv1, bn1, conv2, bn2``; the first block of
    stages 2 and 3 has ``shortcut.0`` conv and ``shortcut.1`` BatchNorm), and the head.

    Groups: one residual stream per stage (``P_stage1..3``, stage 1 includes the stem) and the
    inner units of each block (``P_layer{s}.{b}.inner``).
    """
    blocks = check_int(blocks, "resnet20: blocks", low=1)
    head = _names([head], "resnet20: head", least=1)[0]
    b = _Builder(bn_stats)
    b.out("P_stage1", "conv1")
    b.bn("P_stage1", "bn1")
    for s in (1, 2, 3):
        stream = f"P_stage{s}"
        for k in range(blocks):
            blk = f"layer{s}.{k}"
            inner = f"P_{blk}.inner"
            src = f"P_stage{s - 1}" if (k == 0 and s > 1) else stream
            b.inp(src, f"{blk}.conv1")
            b.out(inner, f"{blk}.conv1")
            b.bn(inner, f"{blk}.bn1")
            b.inp(inner, f"{blk}.conv2")
            b.out(stream, f"{blk}.conv2")
            b.bn(stream, f"{blk}.bn2")
            if k == 0 and s > 1:
                b.inp(src, f"{blk}.shortcut.0")
                b.out(stream, f"{blk}.shortcut.0")
                b.bn(stream, f"{blk}.shortcut.1")
    b.inp("P_stage3", head)
    return b.spec()


def resnet50(*, layers: Sequence[int] = (3, 4, 6, 3), bn_stats: bool = True) -> PermutationSpec:
    """torchvision's ``resnet50`` (Bottleneck blocks; ``downsample.0/1`` on each stage's first
    block; ``fc`` head). ``layers=(3, 4, 23, 3)`` gives ResNet-101.

    Groups: the stem (``P_stem``), one residual stream per stage (``P_layer1..4``) and two inner
    groups per block (``P_layer{s}.{b}.1`` after ``conv1``, ``.2`` after ``conv2``).
    """
    layers = _ints(layers, "resnet50: layers", least=1, low=1)
    b = _Builder(bn_stats)
    b.out("P_stem", "conv1")
    b.bn("P_stem", "bn1")
    prev = "P_stem"
    for s, n in enumerate(layers, start=1):
        stream = f"P_layer{s}"
        for k in range(n):
            blk = f"layer{s}.{k}"
            src = prev if k == 0 else stream
            b.inp(src, f"{blk}.conv1")
            for j, (conv, bn, nxt) in enumerate([("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")], 1):
                g = f"P_{blk}.{j}"
                b.out(g, f"{blk}.{conv}")
                b.bn(g, f"{blk}.{bn}")
                b.inp(g, f"{blk}.{nxt}")
            b.out(stream, f"{blk}.conv3")
            b.bn(stream, f"{blk}.bn3")
            if k == 0:
                b.inp(src, f"{blk}.downsample.0")
                b.out(stream, f"{blk}.downsample.0")
                b.bn(stream, f"{blk}.downsample.1")
        prev = stream
    b.inp(prev, "fc")
    return b.spec()

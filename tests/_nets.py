"""Small numpy models in PyTorch layout and naming, for the spec builders, and a numpy + scipy port
of the official weight-matching loop (the reference our engine is compared with)."""

from __future__ import annotations

import numpy as np



# ------------------------------------------------------------------------------------------------
# Parameters


def _bn(p, name, c, rng):
    p[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
    p[f"{name}.bias"] = rng.standard_normal(c) * 0.1
    p[f"{name}.running_mean"] = rng.standard_normal(c) * 0.1
    p[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c)


def _conv(p, name, o, i, k, rng, bias=False):
    p[f"{name}.weight"] = rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)
    if bias:
        p[f"{name}.bias"] = rng.standard_normal(o) * 0.1


def mlp_params(sizes, rng):
    p = {}
    for k in range(len(sizes) - 1):
        p[f"fc{k}.weight"] = rng.standard_normal((sizes[k + 1], sizes[k])) / np.sqrt(sizes[k])
        p[f"fc{k}.bias"] = rng.standard_normal(sizes[k + 1]) * 0.1
    return p


def resnet20_params(width, rng, classes=10, blocks=3):
    p = {}
    w = [16 * width, 32 * width, 64 * width]
    _conv(p, "conv1", w[0], 3, 3, rng)
    _bn(p, "bn1", w[0], rng)
    cin = w[0]
    for s in range(3):
        for k in range(blocks):
            blk = f"layer{s + 1}.{k}"
            _conv(p, f"{blk}.conv1", w[s], cin, 3, rng)
            _bn(p, f"{blk}.bn1", w[s], rng)
            _conv(p, f"{blk}.conv2", w[s], w[s], 3, rng)
            _bn(p, f"{blk}.bn2", w[s], rng)
            if k == 0 and s > 0:
                _conv(p, f"{blk}.shortcut.0", w[s], cin, 1, rng)
                _bn(p, f"{blk}.shortcut.1", w[s], rng)
            cin = w[s]
    p["linear.weight"] = rng.standard_normal((classes, w[2])) / np.sqrt(w[2])
    p["linear.bias"] = rng.standard_normal(classes) * 0.1
    return p


def resnet50_params(base, rng, layers=(3, 4, 6, 3), classes=10):
    """torchvision resnet50 naming with widths scaled down: stage s has planes base*2^s and
    expansion 4."""
    p = {}
    _conv(p, "conv1", base, 3, 7, rng)
    _bn(p, "bn1", base, rng)
    cin = base
    for s, n in enumerate(layers):
        planes = base * 2**s
        for k in range(n):
            blk = f"layer{s + 1}.{k}"
            _conv(p, f"{blk}.conv1", planes, cin, 1, rng)
            _bn(p, f"{blk}.bn1", planes, rng)
            _conv(p, f"{blk}.conv2", planes, planes, 3, rng)
            _bn(p, f"{blk}.bn2", planes, rng)
            _conv(p, f"{blk}.conv3", planes * 4, planes, 1, rng)
            _bn(p, f"{blk}.bn3", planes * 4, rng)
            if k == 0:
                _conv(p, f"{blk}.downsample.0", planes * 4, cin, 1, rng)
                _bn(p, f"{blk}.downsample.1", planes * 4, rng)
            cin = planes * 4
    p["fc.weight"] = rng.standard_normal((classes, cin)) / np.sqrt(cin)
    p["fc.bias"] = rng.standard_normal(classes) * 0.1
    return p


VGG_CFG = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]


def vgg16_params(base, rng, bn=False, hidden=32, classes=10, spatial=1):
    p = {}
    idx, cin = 0, 3
    for v in VGG_CFG:
        if v == "M":
            idx += 1
            continue
        _conv(p, f"features.{idx}", v * base, cin, 3, rng, bias=True)
        if bn:
            _bn(p, f"features.{idx + 1}", v * base, rng)
        cin = v * base
        idx += 3 if bn else 2
    dims = [cin * spatial * spatial, hidden, hidden, classes]
    for j, layer in enumerate((0, 3, 6)):
        p[f"classifier.{layer}.weight"] = rng.standard_normal((dims[j + 1], dims[j])) / np.sqrt(dims[j])
        p[f"classifier.{layer}.bias"] = rng.standard_normal(dims[j + 1]) * 0.1
    return p


# ------------------------------------------------------------------------------------------------
# Forward passes (eval mode)


def conv2d(x, w, b=None, stride=1, pad=0):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - k) // stride + 1
    wo = (wd + 2 * pad - k) // stride + 1
    cols = np.empty((n, c, k, k, ho, wo))
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = x[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
    y = np.einsum("ncijhw,ocij->nohw", cols, w)
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def bn2d(x, p, name):
    g, b = p[f"{name}.weight"], p[f"{name}.bias"]
    m, v = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    return (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5) * g[None, :, None, None] + b[None, :, None, None]


relu = lambda x: np.maximum(x, 0)  # noqa: E731


def mlp_forward(p, x, n_layers):
    for k in range(n_layers):
        x = x @ p[f"fc{k}.weight"].T + p[f"fc{k}.bias"]
        if k < n_layers - 1:
            x = relu(x)
    return x


def resnet20_forward(p, x, blocks=3):
    x = relu(bn2d(conv2d(x, p["conv1.weight"], pad=1), p, "bn1"))
    for s in range(3):
        for k in range(blocks):
            blk = f"layer{s + 1}.{k}"
            stride = 2 if (k == 0 and s > 0) else 1
            h = relu(bn2d(conv2d(x, p[f"{blk}.conv1.weight"], stride=stride, pad=1), p, f"{blk}.bn1"))
            h = bn2d(conv2d(h, p[f"{blk}.conv2.weight"], pad=1), p, f"{blk}.bn2")
            if f"{blk}.shortcut.0.weight" in p:
                x = bn2d(conv2d(x, p[f"{blk}.shortcut.0.weight"], stride=stride), p, f"{blk}.shortcut.1")
            x = relu(h + x)
    x = x.mean(axis=(2, 3))
    return x @ p["linear.weight"].T + p["linear.bias"]


def resnet50_forward(p, x, layers=(3, 4, 6, 3)):
    x = relu(bn2d(conv2d(x, p["conv1.weight"], stride=2, pad=3), p, "bn1"))
    x = x[:, :, ::2, ::2]  # stands in for the max pool: any per-channel op keeps the symmetry
    for s, n in enumerate(layers):
        for k in range(n):
            blk = f"layer{s + 1}.{k}"
            stride = 2 if (k == 0 and s > 0) else 1
            h = relu(bn2d(conv2d(x, p[f"{blk}.conv1.weight"]), p, f"{blk}.bn1"))
            h = relu(bn2d(conv2d(h, p[f"{blk}.conv2.weight"], stride=stride, pad=1), p, f"{blk}.bn2"))
            h = bn2d(conv2d(h, p[f"{blk}.conv3.weight"]), p, f"{blk}.bn3")
            if k == 0:
                x = bn2d(conv2d(x, p[f"{blk}.downsample.0.weight"], stride=stride), p, f"{blk}.downsample.1")
            x = relu(h + x)
    x = x.mean(axis=(2, 3))
    return x @ p["fc.weight"].T + p["fc.bias"]


def vgg16_forward(p, x, bn=False):
    idx = 0
    for v in VGG_CFG:
        if v == "M":
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
            idx += 1
            continue
        x = conv2d(x, p[f"features.{idx}.weight"], p[f"features.{idx}.bias"], pad=1)
        if bn:
            x = bn2d(x, p, f"features.{idx + 1}")
        x = relu(x)
        idx += 3 if bn else 2
    x = x.reshape(x.shape[0], -1)
    for j, layer in enumerate((0, 3, 6)):
        x = x @ p[f"classifier.{layer}.weight"].T + p[f"classifier.{layer}.bias"]
        if j < 2:
            x = relu(x)
    return x


from rebasin_rs.reference import objective, reference_weight_matching  # noqa: E402,F401

"""GPU check of rebasin_rs.torch: models built on a CUDA device stay there, in their dtype.

For each model (torchvision's zoo when torchvision is installed, small stand-ins of the same
families otherwise): infer the spec on the GPU, plant random permutations into a copy, align the
copy back with ``rbt.align`` and check that

* every parameter and buffer of the aligned model is on the GPU in the model's dtype,
* it equals the original exactly (the planted permutations were undone),
* random permutations of the spec leave the outputs unchanged (``check_equivalence``),

then time ``align`` end to end for two random inits. Exits non-zero if any check fails.

    python benches/gpu_check.py            # on a CUDA machine
    python benches/gpu_check.py --device cpu --stand-ins   # a dry run of the script itself
    python benches/gpu_check.py --large llama-4l llama-4096-4l  # and align on bf16 Llama pairs

Then (``--products``, torchvision needed) ResNet-50 and ViT-B/16 are aligned with their cost
products on the device (torch, what CUDA models get by default) and with the Rust CPU kernels:
the permutations must agree; both median times are printed, and PyPI rebasin's on the same device
in a child with a time limit (``--no-peer`` skips it).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import rebasin_rs
import rebasin_rs.torch as rbt


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class MiniResNet(nn.Module):
    def __init__(self, w=64):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.blocks = nn.Sequential(_Block(w), _Block(w))
        self.fc = nn.Linear(w, 10)

    def forward(self, x):
        return self.fc(self.blocks(F.relu(self.bn(self.stem(x)))).mean((2, 3)))


class MiniDense(nn.Module):
    def __init__(self, g=16):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(32 + i * g), nn.ReLU(), nn.Conv2d(32 + i * g, g, 3, padding=1)) for i in range(3)
        )
        self.fc = nn.Linear(32 + 3 * g, 10)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return self.fc(torch.cat(feats, 1).mean((2, 3)))


class MiniMobile(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand, self.b1 = nn.Conv2d(3, 48, 1), nn.BatchNorm2d(48)
        self.dw, self.b2 = nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48)
        self.se1, self.se2 = nn.Conv2d(48, 12, 1), nn.Conv2d(12, 48, 1)
        self.project = nn.Conv2d(48, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = F.hardswish(self.b2(self.dw(F.hardswish(self.b1(self.expand(x))))))
        h = h * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(h, 1)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.project(h), 1), 1))


class MiniConvNeXt(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.ln(h)))).permute(0, 3, 1, 2)
        return self.fc((x + self.gamma * h).mean((2, 3)))


def zoo(stand_ins: bool):
    try:
        if stand_ins:
            raise ImportError
        import torchvision
    except ImportError:
        return "stand-ins (torchvision not installed or --stand-ins)", {
            "mini_resnet": MiniResNet, "mini_dense": MiniDense, "mini_mobile": MiniMobile,
            "mini_convnext": MiniConvNeXt,
        }
    names = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
             "densenet121"]
    return f"torchvision {torchvision.__version__}", {
        n: (lambda n=n: getattr(torchvision.models, n)(num_classes=10)) for n in names
    }


def excite(model, gen):
    """Random BatchNorm statistics and norm parameters so outputs neither vanish nor hide a wrong
    permutation (see tests/test_torch_zoo.py)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale") or name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def check(name, factory, dtype, failures, dev):
    torch.manual_seed(0)
    a = excite(factory(), torch.Generator().manual_seed(0)).eval().to(dev, dtype)
    x = torch.randn(2, 3, 64, 64, device=dev, dtype=dtype)
    spec = rbt.infer_spec(a, x, warn=False)
    cov = rbt.spec_coverage(a, x)
    rng = np.random.default_rng(1)
    planted = {g: rng.permutation(n) for g, n in spec.validate(a.state_dict()).items()}
    b = rbt.permute_model(a, spec, planted)
    t1 = time.perf_counter()
    aligned, res = rbt.align(a, b, spec=spec)
    _sync(dev)
    t2 = time.perf_counter()
    state = aligned.state_dict()
    on_device = all(t.device.type == dev.type for t in state.values())
    same_dtype = all(t.dtype == a.state_dict()[k].dtype for k, t in state.items())
    exact = all(torch.equal(t, a.state_dict()[k]) for k, t in state.items())
    with torch.no_grad():
        scale = float(a(x).float().abs().max())
    diff = rbt.check_equivalence(a, spec, x)
    tol = (1e-4 if dtype == torch.float32 else 3e-2) * max(1.0, scale)
    ok = on_device and same_dtype and exact and diff <= tol and cov.share == 1.0
    print(f"{name:20s} {str(dtype).replace('torch.', ''):9s} groups {len(spec.groups):4d} "
          f"permuted {cov.permuted:6d}/{cov.hidden:<6d} on_device {on_device!s:5s} dtype_kept {same_dtype!s:5s} "
          f"recovered {exact!s:5s} max|diff| {diff:.2e} (out {scale:.2e}) align {t2 - t1:6.2f} s "
          f"{'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        failures.append((name, dtype))


def timing(name, factory, dev):
    torch.manual_seed(0)
    a = factory().eval().to(dev)
    torch.manual_seed(1)
    b = factory().eval().to(dev)
    x = torch.randn(1, 3, 64, 64, device=dev)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        aligned, res = rbt.align(a, b, x)
        _sync(dev)
        times.append(time.perf_counter() - t)
    print(f"align {name} (two random inits, end to end incl. tracing): median {np.median(times):.2f} s, "
          f"{res.sweeps} sweeps, objective {res.objective:.1f}", flush=True)


def _pair(name, dev):
    import torchvision

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(getattr(torchvision.models, name)(num_classes=10).eval().to(dev))
    return models


def products(name, dev, repeat=3):
    """``rbt.align`` with the cost products on the device (torch, the default for CUDA models)
    against the Rust CPU kernels on the same models: identical permutations, median times. Returns
    whether the permutations agree."""
    a, b = _pair(name, dev)
    x = torch.randn(1, 3, 224, 224, device=dev)
    spec = rbt.infer_spec(a, x, warn=False)
    rows = {}
    # "torch" is what CUDA models get by default ("auto"); named so that a CPU dry run takes it too.
    for mode in ("torch", "cpu"):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            _, res = rbt.align(a, b, spec=spec, products=mode)
            _sync(dev)
            times.append(time.perf_counter() - t)
        rows[mode] = (float(np.median(times)), res)
    same = all(np.array_equal(rows["torch"][1].perms[g], rows["cpu"][1].perms[g]) for g in rows["cpu"][1].perms)
    (t_dev, r_dev), (t_cpu, _) = rows["torch"], rows["cpu"]
    print(f"align {name} (spec given): products on {dev.type} {t_dev:.2f} s (products {r_dev.timings['gemm']:.2f} s, "
          f"lap {r_dev.timings['lap']:.2f} s, {r_dev.sweeps} sweeps) | Rust CPU kernels {t_cpu:.2f} s | "
          f"{t_cpu / t_dev:.1f}x | same permutations {same}", flush=True)
    return same


_PEER = """
import sys, time, copy, statistics, torch, torchvision
from rebasin.permutation_coordinate_descent import PermutationCoordinateDescent
name, dev = sys.argv[1], torch.device(sys.argv[2])
ms = []
for seed in (0, 1):
    torch.manual_seed(seed)
    ms.append(getattr(torchvision.models, name)(num_classes=10).eval().to(dev))
x = torch.randn(1, 3, 224, 224, device=dev)
import inspect
params = inspect.signature(PermutationCoordinateDescent).parameters
kw = {k: dev for k in ("device_a", "device_b") if k in params}
times = []
for _ in range(int(sys.argv[3])):
    bb = copy.deepcopy(ms[1])
    t = time.perf_counter()
    PermutationCoordinateDescent(ms[0], bb, x, **kw).rebasin()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
print(f"PEER {statistics.median(times):.3f}")
"""


def peer(name, dev, repeat=2, timeout=300):
    """PyPI rebasin's PermutationCoordinateDescent on the same pair on ``dev``, in a child with a
    time limit (median seconds, or None)."""
    import subprocess

    try:
        p = subprocess.run([sys.executable, "-c", _PEER, name, str(dev), str(repeat)], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"PyPI rebasin {name} on {dev}: over {timeout} s", flush=True)
        return None
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("PEER ")), None)
    if line is None:
        print(f"PyPI rebasin {name} on {dev}: failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        return None
    print(f"PyPI rebasin 0.0.47 {name} on {dev}: median {float(line[5:]):.2f} s", flush=True)
    return float(line[5:])


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--stand-ins", action="store_true", help="small stand-in models even with torchvision")
    ap.add_argument("--large", nargs="*", default=[], metavar="SHAPE",
                    help="also run benches/bench_large.py on this device for these shapes (e.g. llama-4l "
                         "llama-4096-4l): time and memory of align on billion-parameter bf16 pairs")
    ap.add_argument("--products", nargs="*", default=["resnet50", "vit_b_16"], metavar="MODEL",
                    help="torchvision models to align with device products vs the CPU kernels, and with PyPI "
                         "rebasin on the device (default: resnet50 vit_b_16; none: --products)")
    ap.add_argument("--no-peer", action="store_true", help="skip PyPI rebasin")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    kind, models = zoo(args.stand_ins)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"rebasin_rs {rebasin_rs.__version__}, torch {torch.__version__}, {name}, "
          f"python {sys.version.split()[0]}, models: {kind}", flush=True)
    failures: list = []
    for name, factory in models.items():
        check(name, factory, torch.float32, failures, dev)
    for name in list(models)[:2]:
        for dtype in (torch.float16, torch.bfloat16):
            check(name, models[name], dtype, failures, dev)
    for name in list(models)[:2]:
        timing(name, models[name], dev)
    if args.products:
        for name in args.products:
            if not products(name, dev):
                failures.append((name, "products"))
            if not args.no_peer:
                peer(name, dev)
    if args.large:
        import os
        import subprocess

        bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_large.py")
        subprocess.run([sys.executable, bench, "--device", args.device, "--shapes", *args.large], timeout=1800)
    print("all checks passed" if not failures else f"FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

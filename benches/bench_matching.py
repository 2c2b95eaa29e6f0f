"""Weight matching side by side: rebasin_rs against the numpy + scipy port of the official loop.

For each model: end-to-end time of both (same visiting order), the objectives, the speed-up, and
rebasin_rs's peak memory (measured in a fresh subprocess) against the budget "twice the two
models' float32 size plus the largest cost matrix"; where rebasin_rs's time went (its
``MatchingResult.timings``). Then the cost kernel's GEMM throughput against numpy's matmul on the
same shapes.

Usage:
    python benches/bench_matching.py                 # MLP 3x512, 3x2048, 3x4096, ResNet-20 x4
    python benches/bench_matching.py --models mlp512 resnet20x4 --out results.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import rebasin_rs as rb
from rebasin_rs.reference import objective, reference_weight_matching


def mlp(width: int, rng: np.random.Generator):
    sizes = [784, width, width, width, 10]
    p = {}
    for k in range(4):
        p[f"fc{k}.weight"] = (rng.standard_normal((sizes[k + 1], sizes[k])) / np.sqrt(sizes[k])).astype(np.float32)
        p[f"fc{k}.bias"] = np.zeros(sizes[k + 1], np.float32)
    return rb.specs.mlp([f"fc{k}" for k in range(4)]), p


def resnet20(width: int, rng: np.random.Generator):
    def conv(o, i, k):
        return (rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)).astype(np.float32)

    def bn(p, name, c):
        p[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        p[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        p[f"{name}.running_mean"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        p[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

    w = [16 * width, 32 * width, 64 * width]
    p = {"conv1.weight": conv(w[0], 3, 3)}
    bn(p, "bn1", w[0])
    cin = w[0]
    for s in range(3):
        for k in range(3):
            blk = f"layer{s + 1}.{k}"
            p[f"{blk}.conv1.weight"] = conv(w[s], cin, 3)
            bn(p, f"{blk}.bn1", w[s])
            p[f"{blk}.conv2.weight"] = conv(w[s], w[s], 3)
            bn(p, f"{blk}.bn2", w[s])
            if k == 0 and s > 0:
                p[f"{blk}.shortcut.0.weight"] = conv(w[s], cin, 1)
                bn(p, f"{blk}.shortcut.1", w[s])
            cin = w[s]
    p["linear.weight"] = (rng.standard_normal((10, w[2])) / np.sqrt(w[2])).astype(np.float32)
    p["linear.bias"] = np.zeros(10, np.float32)
    return rb.specs.resnet20(), p


MODELS = {
    "mlp512": lambda rng: mlp(512, rng),
    "mlp2048": lambda rng: mlp(2048, rng),
    "mlp4096": lambda rng: mlp(4096, rng),
    "resnet20x4": lambda rng: resnet20(4, rng),
}


def build(name: str):
    spec, a = MODELS[name](np.random.default_rng(0))
    _, b = MODELS[name](np.random.default_rng(1))
    return spec, a, b


def pypi_rebasin(name: str):
    """Time and objective of PyPI ``rebasin``'s PermutationCoordinateDescent (weight matching on
    torch modules) on the same MLP, or None with the reason it does not run."""
    if not name.startswith("mlp"):
        return None, "n/a (its specs come from tracing torch modules; compared on the MLPs)"
    try:
        import torch
        from rebasin.permutation_coordinate_descent import PermutationCoordinateDescent
    except ImportError as e:
        return None, f"not installed ({e.name})"
    spec, a, b = build(name)
    width = a["fc0.weight"].shape[0]

    def model(p):
        m = torch.nn.Sequential(torch.nn.Linear(784, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, 10))
        sd = {f"{2 * k}.{f}": torch.from_numpy(p[f"fc{k}.{f}"]) for k in range(4) for f in ("weight", "bias")}
        m.load_state_dict(sd)
        return m

    ma, mb = model(a), model(b)
    t0 = time.perf_counter()
    PermutationCoordinateDescent(ma, mb, torch.randn(1, 784)).rebasin()
    dt = time.perf_counter() - t0
    sd = mb.state_dict()
    b2 = {f"fc{k}.{f}": sd[f"{2 * k}.{f}"].numpy() for k in range(4) for f in ("weight", "bias")}
    obj = float(sum(np.sum(a[p].astype(np.float64) * b2[p].astype(np.float64)) for p in spec.params()))
    return (dt, obj), ""


def peak_memory(name: str) -> dict:
    """Runs rebasin_rs alone in a subprocess and reports its peak RSS over the models' size."""
    code = f"""
import json, resource, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_matching as bm, rebasin_rs as rb
spec, a, b = bm.build({name!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = rb.weight_matching(spec, a, b)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"base_kib": base, "peak_kib": peak}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def gemm_throughput(repeats: int = 3) -> list[tuple[str, float, float]]:
    """GFLOP/s of the matching cost kernel (faer, via rb.group_cost) and numpy's matmul
    on the hidden groups of the MLP 3x4096."""
    spec, a, b = build("mlp4096")
    sizes = spec.validate(a)
    rows = []
    for g in list(spec.groups)[:2]:
        flops = sum(2.0 * a[p].size * a[p].shape[ax] for p, ax in spec.groups[g])
        t_ours = statistics.median(_time(lambda: rb.group_cost(spec, a, b, None, g)) for _ in range(repeats))

        def numpy_cost():
            n = sizes[g]
            c = np.zeros((n, n), np.float32)
            for p, ax in spec.groups[g]:
                wa = np.moveaxis(a[p], ax, 0).reshape(n, -1)
                wb = np.moveaxis(b[p], ax, 0).reshape(n, -1)
                c += wa @ wb.T
            return c

        t_np = statistics.median(_time(numpy_cost) for _ in range(repeats))
        rows.append((g, flops / t_ours / 1e9, flops / t_np / 1e9))
    return rows


def _time(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--out")
    ap.add_argument("--no-pypi-rebasin", dest="pypi_rebasin", action="store_false",
                    help="skip PyPI rebasin (pip install rebasin torchview graphviz to include it)")
    args = ap.parse_args(argv)
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    out(f"Machine: {os.cpu_count()} cores; rebasin_rs {rb.__version__}; numpy {np.__version__}.")
    out()
    out("| model | rebasin_rs (s) | sweeps | numpy+scipy port (s) | speed-up | objective ours / port "
        "| PyPI rebasin (s, speed-up, objective ours / its) | peak memory / budget |")
    out("|---|---|---|---|---|---|---|---|")
    spent = []
    for name in args.models:
        spec, a, b = build(name)
        t0 = time.perf_counter()
        res = rb.weight_matching(spec, a, b)
        t_ours = time.perf_counter() - t0
        spent.append((name, res.timings))
        t0 = time.perf_counter()
        ref = reference_weight_matching(spec, a, b)
        t_ref = time.perf_counter() - t0
        ref_obj = objective(spec, ref, a, b)
        mem = peak_memory(name)
        models = sum(x.nbytes for x in a.values()) + sum(x.nbytes for x in b.values())
        largest = max(n * n * 4 for n in spec.validate(a).values())
        budget = 2 * models + largest
        # The budget counts what matching adds on top of the interpreter and the loaded models.
        used = (mem["peak_kib"] - mem["base_kib"]) * 1024 + models
        peer, why = pypi_rebasin(name) if args.pypi_rebasin else (None, "not run")
        peer_cell = (f"{peer[0]:.2f}, {peer[0] / t_ours:.1f}x, {res.objective / peer[1]:.4f}" if peer else why)
        out(f"| {name} | {t_ours:.2f} | {res.sweeps} | {t_ref:.2f} | {t_ref / t_ours:.1f}x | "
            f"{res.objective / ref_obj:.6f} | {peer_cell} | {used / 2**20:.0f} / {budget / 2**20:.0f} MiB |")
    out()
    out("Where rebasin_rs's time went (s, from MatchingResult.timings):")
    out()
    out("| model | cost products (GEMM) | gathers | assignments (LAP) | total in Rust |")
    out("|---|---|---|---|---|")
    for name, t in spent:
        out(f"| {name} | {t['gemm']:.3f} | {t['gather']:.3f} | {t['lap']:.3f} | {t['total']:.3f} |")
    out()
    out("Cost kernel throughput (GFLOP/s), MLP 3x4096 hidden groups, float32:")
    out()
    out("| group | rebasin_rs (faer) | numpy matmul | ratio |")
    out("|---|---|---|---|")
    for g, ours, npy in gemm_throughput():
        out(f"| {g} | {ours:.1f} | {npy:.1f} | {ours / npy:.2f} |")
    if args.out:
        with open(args.out + ".tmp", "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

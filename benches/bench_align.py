"""End-to-end ``rbt.align`` of two random inits of torchvision models, side by side with PyPI
``rebasin`` (its ``PermutationCoordinateDescent``), in one process.

For each model: B is aligned to A by both tools, each timed end to end from the two models to the
aligned model (tracing included; median of ``--repeat`` runs), and scored with the paper's
objective ``sum_p <A_p, B'_p>`` over every learnable parameter (float64). Both aligned models are
checked to compute what B computes. Needs the ``torch`` extra and torchvision; ``rebasin`` (with
``torchview`` and ``graphviz``) is optional: ``pip install rebasin torchview graphviz``.

    python benches/bench_align.py                     # resnet18 and resnet50
    python benches/bench_align.py --models vit_b_16 --repeat 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

import rebasin_rs.torch as rbt
from bench_lap import machine  # benches/ is on sys.path when a bench runs as a script


def randomize_zeros(model: torch.nn.Module) -> torch.nn.Module:
    """Parameters initialised to one constant (ViT's head and class token are zeros) drawn at
    random instead, so that the outputs, and the check that alignment keeps them, mean something."""
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and float(p.std()) == 0.0 and float(p.abs().max()) == 0.0:
                p.normal_(0, 0.02)
    return model


def objective(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pa = dict(a.named_parameters())
    with torch.no_grad():
        return sum(float((pa[k].double() * v.double()).sum()) for k, v in b.named_parameters())


def max_diff(m1: torch.nn.Module, m2: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((m1(x) - m2(x)).abs().max())


def run_ours(a, b, x, repeat, init):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        aligned, res = rbt.align(a, b, x, init=init)
        times.append(time.perf_counter() - t)
    return statistics.median(times), aligned, res.sweeps


def run_rebasin(a, b, x, repeat):
    from rebasin.permutation_coordinate_descent import PermutationCoordinateDescent

    times = []
    for _ in range(repeat):
        bb = copy.deepcopy(b)
        t = time.perf_counter()
        pcd = PermutationCoordinateDescent(a, bb, x)
        pcd.rebasin()
        times.append(time.perf_counter() - t)
    return statistics.median(times), bb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224, help="input image size for tracing (both tools)")
    ap.add_argument("--no-rebasin", action="store_true")
    args = ap.parse_args()
    print(f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    try:
        import rebasin  # noqa: F401

        have_rebasin = not args.no_rebasin
    except ImportError:
        have_rebasin = False
        print("PyPI rebasin not installed: our rows only")
    header = f"{'model':10s} {'tool':28s} {'median s':>9s} {'speedup':>8s} {'objective':>12s} {'gain':>9s} {'vs B max|diff|':>15s}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        torch.manual_seed(0)
        a = randomize_zeros(getattr(torchvision.models, name)().eval())
        torch.manual_seed(1)
        b = randomize_zeros(getattr(torchvision.models, name)().eval())
        x = torch.randn(1, 3, args.size, args.size)
        base = objective(a, b)
        rows = []
        t_ours, ours, sweeps = run_ours(a, b, x, args.repeat, "forward")
        rows.append((f"rebasin_rs ({sweeps} sweeps)", t_ours, ours))
        t_paper, paper, sweeps_p = run_ours(a, b, x, args.repeat, None)
        rows.append((f"rebasin_rs init=None ({sweeps_p} sw.)", t_paper, paper))
        t_ref = None
        if have_rebasin:
            t_ref, theirs = run_rebasin(a, b, x, args.repeat)
            rows.append(("PyPI rebasin 0.0.47 (PCD)", t_ref, theirs))
        for tool, t, m in rows:
            speed = f"{t_ref / t:7.1f}x" if t_ref else "      -"
            obj = objective(a, m)
            print(f"{name:10s} {tool:28s} {t:9.2f} {speed:>8s} {obj:12.1f} {obj - base:+9.1f} {max_diff(m, b, x):15.2e}")
    print("gain: objective minus that of B unaligned; speedup: PyPI rebasin's median time over the row's")


if __name__ == "__main__":
    main()

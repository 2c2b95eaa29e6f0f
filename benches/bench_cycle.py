"""Merging N models trained from different seeds: MergeMany vs cycle-consistent Frank-Wolfe
(C2M3's optimiser) vs pairwise weight matching, on MNIST-1D MLPs trained on all classes.

For each method: the objective ``sum_i <model_i, mean of the others>`` (aligned), the merged
model's test accuracy and loss (the average of the aligned models), the cycle error of its pairwise
maps, and the loss barrier of every pair (model i aligned onto model j, interpolated). Pairwise
weight matching aligns each pair on its own (no merged model; its maps are not consistent).

    python benches/bench_cycle.py [--models 4] [--width 256] [--epochs 40]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import rebasin_rs as rb
import rebasin_rs.torch as rbt
from _machine import cpu_name
from rebasin_rs.demo import load_mnist1d, mlp, train


def evaluate(model, x, y):
    with torch.no_grad():
        out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def barrier(a, b, x, y, alphas=11):
    losses = [evaluate(rbt.merge(a, b, alpha=float(t)), x, y)[0] for t in np.linspace(0, 1, alphas)]
    return rb.loss_barrier(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    print(f"Machine: {cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    x, y, xt, yt = load_mnist1d()
    t = time.perf_counter()
    models = []
    for s in range(args.models):
        torch.manual_seed(s)
        models.append(train(mlp(args.width), x, y, epochs=args.epochs, seed=s))
    print(f"{args.models} MLPs 40-{args.width}x3-10 trained {args.epochs} epochs in {time.perf_counter() - t:.0f} s; "
          "test accuracy " + ", ".join(f"{evaluate(m, xt, yt)[1]:.3f}" for m in models))
    spec = rbt.infer_spec(models[0], x[:1])
    n = len(models)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    print()
    print("| method | objective | time (s) | merged test acc | merged test loss | cycle error | pair barriers (median, max) |")
    print("|---|---|---|---|---|---|---|")
    avg = [m.state_dict() for m in models]
    naive = mlp(args.width)
    naive.load_state_dict({k: sum(s[k] for s in avg) / n for k in avg[0]})
    bars = [barrier(models[i], models[j], xt, yt) for i, j in itertools.combinations(range(n), 2)]
    loss, acc = evaluate(naive.eval(), xt, yt)
    print(f"| naive average | - | - | {acc:.3f} | {loss:.3f} | - | {statistics.median(bars):.3f}, {max(bars):.3f} |")
    for method in ("mergemany", "frank-wolfe"):
        t = time.perf_counter()
        out = rbt.merge_many(models, spec=spec, method=method)
        took = time.perf_counter() - t
        maps = {(i, j): out.pairwise(i, j) for i, j in pairs}
        loss, acc = evaluate(out.merged, xt, yt)
        bars = [barrier(rbt.permute_model(models[i], spec, maps[(i, j)]), models[j], xt, yt)
                for i, j in itertools.combinations(range(n), 2)]
        print(f"| {method} | {out.objective:.1f} | {took:.2f} | {acc:.3f} | {loss:.3f} | "
              f"{rb.cycle_error(maps):.3f} | {statistics.median(bars):.3f}, {max(bars):.3f} |", flush=True)
    t = time.perf_counter()
    maps = {(i, j): rbt.align(models[j], models[i], x[:1], spec=spec)[1].perms for i, j in pairs}
    took = time.perf_counter() - t
    bars = [barrier(rbt.permute_model(models[i], spec, maps[(i, j)]), models[j], xt, yt)
            for i, j in itertools.combinations(range(n), 2)]
    print(f"| pairwise weight matching | - | {took:.2f} | - | - | {rb.cycle_error(maps):.3f} | "
          f"{statistics.median(bars):.3f}, {max(bars):.3f} |")


if __name__ == "__main__":
    main()

"""ZipIt! against permutation merging on scikit-learn's digits (shipped with scikit-learn, no
download): model A learns digits 0-4, model B digits 5-9; the merged models are scored on all ten.
Weight matching assumes the two models learnt the same features in another order, which models
of different tasks did not; zipping merges the features that correlate, inside a model too, and
keeps the rest. Draws the test accuracies as bars.

    python examples/zipit_digits.py [--width 128] [--epochs 40] [--out docs/gallery/zipit_digits.png]

Run time on a 2-core AMD EPYC (torch 2.15 CPU): about 8 s.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import torch
from sklearn.datasets import load_digits

import rebasin_rs.torch as rbt
from rebasin_rs.demo import mlp, train

HERE = pathlib.Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", type=pathlib.Path, default=HERE.parent / "docs" / "gallery" / "zipit_digits.png")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    (x, y), (xt, yt) = (x[order[:1200]], y[order[:1200]]), (x[order[1200:]], y[order[1200:]])
    torch.manual_seed(0)
    a = train(mlp(args.width, n_in=64), x[y < 5], y[y < 5], epochs=args.epochs, seed=0)
    torch.manual_seed(1)
    b = train(mlp(args.width, n_in=64), x[y >= 5], y[y >= 5], epochs=args.epochs, seed=1)
    data = [x[k:k + 300] for k in range(0, len(x), 300)]  # inputs only: zipping needs no labels
    models = {
        "model A (0-4)": a,
        "model B (5-9)": b,
        "naive average": rbt.merge(a, b),
        "weight matching": rbt.merge(a, rbt.align(a, b, x[:1])[0]),
        "zipit": rbt.zipit([a, b], data).merged,
        "zipit, stop_at='3'": rbt.zipit([a, b], data, stop_at="3").merged,
        "ensemble": lambda z: (a(z) + b(z)) / 2,
    }
    with torch.no_grad():
        acc = {name: float((m(xt).argmax(1) == yt).float().mean()) for name, m in models.items()}
    for name, v in acc.items():
        print(f"{name:22s} {v:.3f}")
    print(f"took {time.perf_counter() - t0:.1f} s")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(range(len(acc)), list(acc.values()), color=["#999"] * 2 + ["#c44", "#c84"] + ["#48c"] * 2 + ["#999"])
        ax.set_xticks(range(len(acc)), list(acc), rotation=20, ha="right")
        ax.set_ylabel("test accuracy, all 10 digits")
        ax.set_ylim(0, 1)
        ax.set_title("digits: A trained on 0-4, B on 5-9, merged into one model")
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        plt.close(fig)
        print(f"figure written to {args.out}")
    return acc


if __name__ == "__main__":
    main()

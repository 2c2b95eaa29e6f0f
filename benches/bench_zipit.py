"""ZipIt! against permutation merging on models trained on disjoint label sets (MNIST-1D):
model A learns classes 0-4, model B classes 5-9 (both with 10 outputs, from different seeds); the
merged model is evaluated on all ten classes (and on each half). The ensemble (mean of both
models' logits) is the two-model reference. Partial zipping: ``stop_at="3"`` zips the first two
hidden layers (each model keeps its third and its output layer), ``"1"`` the first only.
``--arch attention``: a one-block transformer instead (the input cut into 8-wide tokens, 4 heads,
LayerNorms, an MLP, mean pooling): its heads are zipped as whole heads, its within-head units
knowing the heads; partial zipping at ``"proj"`` (the attention) and ``"n2"``.

    python benches/bench_zipit.py [--width 128] [--epochs 40] [--seeds 3] [--dataset digits]
                                  [--arch attention]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rebasin_rs.torch as rbt
from _machine import cpu_name
from rebasin_rs.demo import load_mnist1d, mlp, train


def load_digits():
    """scikit-learn's digits (1797 8x8 images, 10 classes) as (x, y, x_test, y_test): 1200 / 597."""
    from sklearn.datasets import load_digits as digits

    d = digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[:1200]], y[order[:1200]], x[order[1200:]], y[order[1200:]]


class Attention(torch.nn.Module):
    """The input cut into tokens of 8 features (digits: its 8 rows); one pre-norm transformer
    block (``heads`` heads over ``width`` features, an MLP of twice the width), mean pooling."""

    def __init__(self, n_in: int, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        from torch import nn

        self.tokens, self.heads = n_in // 8, heads
        self.embed, self.pos = nn.Linear(8, width), nn.Parameter(torch.randn(1, n_in // 8, width) * 0.1)
        self.n1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.n2, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        b = x.shape[0]
        h = self.embed(x[:, :self.tokens * 8].reshape(b, self.tokens, 8)) + self.pos
        q, k, v = self.qkv(self.n1(h)).reshape(b, self.tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, self.tokens, -1)
        h = h + self.proj(a)
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(self.n2(h))))
        return self.head(h.mean(1))


def accuracy(fn, x, y) -> float:
    with torch.no_grad():
        return float((fn(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3, help="pairs of models (seeds 2s, 2s + 1)")
    ap.add_argument("--plot", metavar="PNG", help="also draw the accuracies into this .png file")
    ap.add_argument("--dataset", choices=["mnist1d", "digits"], default="mnist1d",
                    help="MNIST-1D (generated locally) or scikit-learn's digits (8x8, 1200 train / 597 test)")
    ap.add_argument("--arch", choices=["mlp", "attention"], default="mlp",
                    help="MLPs of three hidden layers, or a one-block transformer of 4 heads (see the notes)")
    args = ap.parse_args()
    print(f"Machine: {cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    x, y, xt, yt = load_mnist1d() if args.dataset == "mnist1d" else load_digits()
    lo, hi = y < 5, y >= 5
    rows: dict[str, list] = {}
    took: dict[str, list] = {}
    def make():
        return mlp(args.width, n_in=x.shape[1]) if args.arch == "mlp" else Attention(x.shape[1], args.width)

    cuts = ("3", "1") if args.arch == "mlp" else ("n2", "proj")
    for s in range(args.seeds):
        torch.manual_seed(2 * s)
        a = train(make(), x[lo], y[lo], epochs=args.epochs, seed=2 * s)
        torch.manual_seed(2 * s + 1)
        b = train(make(), x[hi], y[hi], epochs=args.epochs, seed=2 * s + 1)
        data = [x[k:k + 500] for k in range(0, len(x), 500)]
        methods = {"model A (classes 0-4)": a, "model B (classes 5-9)": b,
                   "ensemble (mean of logits)": lambda z, a=a, b=b: (a(z) + b(z)) / 2}
        methods["naive average"] = rbt.merge(a, b)
        t = time.perf_counter()
        aligned, _ = rbt.align(a, b, x[:1])
        methods["weight matching, averaged"] = rbt.merge(a, aligned)
        took.setdefault("weight matching, averaged", []).append(time.perf_counter() - t)
        acts, _ = rbt.align(a, b, x[:1], method="activation", data=data)
        methods["activation matching, averaged"] = rbt.merge(a, acts)
        for alpha, stop in ((0.0, None), (0.5, None), (0.5, cuts[0]), (0.5, cuts[1])):
            name = f"zipit (alpha {alpha}, beta 1)" + (f", stop_at={stop!r}" if stop else "")
            t = time.perf_counter()
            methods[name] = rbt.zipit([a, b], data, alpha=alpha, stop_at=stop).merged
            took.setdefault(name, []).append(time.perf_counter() - t)
        for name, fn in methods.items():
            rows.setdefault(name, []).append((accuracy(fn, xt, yt), accuracy(fn, xt[yt < 5], yt[yt < 5]),
                                              accuracy(fn, xt[yt >= 5], yt[yt >= 5])))
    arch = f"MLPs {x.shape[1]}-{args.width}x3-10" if args.arch == "mlp" else \
        f"one-block transformers ({x.shape[1] // 8} tokens of 8, width {args.width}, 4 heads)"
    print(f"{args.dataset}: {arch}, {args.epochs} epochs on the {len(x)} training "
          f"examples of their half each; test accuracy, median over {args.seeds} pairs:")
    print()
    print("| model | all 10 classes | classes 0-4 | classes 5-9 | time (s) |")
    print("|---|---|---|---|---|")
    for name, accs in rows.items():
        med = [statistics.median(a[k] for a in accs) for k in range(3)]
        t = f"{statistics.median(took[name]):.2f}" if name in took else "-"
        print(f"| {name} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} | {t} |")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for k, (label, color) in enumerate((("all 10 classes", "C0"), ("classes 0-4", "C1"), ("classes 5-9", "C2"))):
        ax.barh([i + (k - 1) * 0.27 for i in range(len(names))],
                [statistics.median(a[k] for a in rows[n]) for n in names], height=0.27, label=label, color=color)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (median over the pairs)")
    ax.set_title("MNIST-1D, model A on classes 0-4, model B on 5-9: merged into one", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

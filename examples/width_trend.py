"""The paper's width trend on MNIST-1D (Git Re-Basin, Figure 4): the barrier between two models
trained from different seeds, against the width of the network. Naive interpolation's barrier
stays high at every width; after weight matching it falls as the network widens, and REPAIR
(renormalising the merged model's activations) lowers it further. Narrow MLPs do not fit
MNIST-1D's training set (train loss about 1 at 32 units), so both their end points are poor and
their train-loss barrier small; the table prints the end points' train loss beside the barriers,
and the test-accuracy barrier is drawn too.

MLPs of three hidden ReLU layers (as the paper's MNIST MLP), trained with Adam on MNIST-1D's 4000
training sequences (generated locally); the barrier is the train loss's largest rise above the
straight line between the end points, over 11 interpolation points (REPAIR: at the midpoint,
the merged model repaired on the training data). Trained models are cached
(``--cache``), so a second run only re-measures.

    python examples/width_trend.py [--widths 32 64 128 256 512 1024 2048] [--seeds 3] [--epochs 40]
                                   [--cache examples/.cache] [--out docs/gallery/width_trend.png]

Run time on a 2-core AMD EPYC (torch 2.15 CPU): about 7 minutes from nothing (21 models; width
2048 takes most of it: the seven models of one seed train in about 2 minutes), 58 s with the
models cached.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F

import rebasin_rs.torch as rbt
from rebasin_rs.demo import load_mnist1d, mlp, train

HERE = pathlib.Path(__file__).resolve().parent


def trained(width: int, seed: int, epochs: int, x, y, cache: pathlib.Path):
    """The MLP of this width trained from ``seed``, from the cache when it is there."""
    path = cache / f"mnist1d-mlp{width}x3-seed{seed}-epochs{epochs}.pt"
    model = mlp(width, n_in=x.shape[1])
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    model = train(model, x, y, epochs=epochs, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # whole or not at all
    return model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--seeds", type=int, default=3, help="models per width (seeds 0, 1, ...): pairs of consecutive seeds")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--cache", type=pathlib.Path, default=HERE / ".cache", help="where trained models are kept")
    ap.add_argument("--out", type=pathlib.Path, default=HERE.parent / "docs" / "gallery" / "width_trend.png")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 (a barrier needs two models)")
    t0 = time.perf_counter()
    x, y, _, _ = load_mnist1d()
    data = [x[k:k + 500] for k in range(0, len(x), 500)]

    x_test, y_test = load_mnist1d()[2:]

    def evaluate(m):
        with torch.no_grad():
            return {"train loss": float(F.cross_entropy(m(x), y)),
                    "accuracy (test)": float((m(x_test).argmax(1) == y_test).float().mean())}

    def barrier(curve) -> tuple[float, float]:
        return curve.barriers["train loss"], curve.barriers["accuracy (test)"]

    rows: dict[int, dict[str, list[float]]] = {}
    for w in args.widths:
        models = [trained(w, s, args.epochs, x, y, args.cache) for s in range(args.seeds)]
        row: dict[str, list] = {"end points' train loss": [], "naive": [], "weight matching": [],
                                "weight matching + REPAIR": []}
        for a, b in zip(models, models[1:]):
            aligned, _ = rbt.align(a, b, x[:1])
            ea, eb = evaluate(a), evaluate(b)
            row["end points' train loss"].append(((ea["train loss"] + eb["train loss"]) / 2, float("nan")))
            row["naive"].append(barrier(rbt.interpolation_curve(a, b, evaluate)))
            row["weight matching"].append(barrier(rbt.interpolation_curve(a, aligned, evaluate)))
            em = evaluate(rbt.repair(a, aligned, rbt.merge(a, aligned), data))  # at alpha 0.5
            row["weight matching + REPAIR"].append((em["train loss"] - (ea["train loss"] + eb["train loss"]) / 2,
                                                    (ea["accuracy (test)"] + eb["accuracy (test)"]) / 2
                                                    - em["accuracy (test)"]))
        rows[w] = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs))
                   for k, vs in row.items()}
        print(f"width {w:5d}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in rows[w].items()), flush=True)
    seconds = time.perf_counter() - t0
    print(f"\nMNIST-1D, MLP 40-w x3-10, {args.epochs} epochs, {args.seeds} seeds per width; barriers, train loss / "
          f"test accuracy (median over {args.seeds - 1} pair(s)):\n")
    names = list(rows[args.widths[0]])
    print("| width | " + " | ".join(names) + " |")
    print("|---" * (1 + len(names)) + "|")
    for w, row in rows.items():
        cells = [f"{row[names[0]][0]:.3f}"] + [f"{row[n][0]:.3f} / {row[n][1]:.3f}" for n in names[1:]]
        print(f"| {w} | " + " | ".join(cells) + " |")
    print(f"\ntook {seconds:.0f} s")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for k, (ax, label) in enumerate(zip(axes, ("train-loss barrier", "test-accuracy barrier"))):
            for name in names[1:]:
                ax.plot(args.widths, [rows[w][name][k] for w in args.widths], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("hidden units per layer")
            ax.set_ylabel(label)
            ax.axhline(0, color="grey", lw=0.5)
        axes[0].plot(args.widths, [rows[w][names[0]][0] for w in args.widths], ls=":", color="grey",
                     label="end points' train loss")
        axes[0].legend()
        fig.suptitle(f"MNIST-1D MLPs (3 hidden layers, {args.epochs} epochs): barriers against width")
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        plt.close(fig)
        print(f"figure written to {args.out}")
    return rows


if __name__ == "__main__":
    main()

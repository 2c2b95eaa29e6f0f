"""The demo: two MLPs trained from different seeds on MNIST-1D, merged naively and after weight
matching, with their loss and accuracy barriers and a PNG of both interpolation curves.

MNIST-1D (Greydanus 2020) is generated locally by the ``mnist1d`` package (``make_dataset``): no
download. Run it with ``rebasin demo`` or ``python -m rebasin_rs.demo``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["DemoResult", "load_mnist1d", "mlp", "run_demo", "train"]


@dataclass(frozen=True)
class DemoResult:
    """Barriers of the naive and the aligned merge, and the curves behind them."""

    naive: Any
    aligned: Any
    seconds: float
    plot: str | None


def load_mnist1d(seed: int = 42):
    """MNIST-1D (4000 training and 1000 test sequences of length 40, 10 classes) as float32 /
    int64 tensors ``(x, y, x_test, y_test)``, generated locally by ``mnist1d.data.make_dataset``."""
    import torch

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError("the demo needs the mnist1d package: pip install mnist1d "
                          "(or '.[demo]' from a clone of rebasin-rs)") from None
    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return t(d["x"], torch.float32), t(d["y"], torch.int64), t(d["x_test"], torch.float32), t(d["y_test"], torch.int64)


def mlp(width: int = 512, depth: int = 3, n_in: int = 40, n_out: int = 10):
    """``depth`` hidden ReLU layers of ``width`` units."""
    from torch import nn

    layers: list = []
    for k in range(depth):
        layers += [nn.Linear(n_in if k == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def train(model, x, y, *, epochs: int, seed: int, lr: float = 1e-3, batch: int = 128, progress: bool = False):
    """Adam on cross-entropy; the data order is drawn from ``seed``."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    epochs_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_iter = tqdm(epochs_iter, desc=f"training model (seed {seed})", leave=False)
    for _ in epochs_iter:
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), batch):
            idx = order[k:k + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def run_demo(out: str | None = "rebasin-demo.png", *, width: int = 512, epochs: int = 60, seed: int = 0,
             alphas: int = 21, quiet: bool = False) -> DemoResult:
    """Trains two MLPs (seeds ``seed`` and ``seed + 1``), aligns B to A by weight matching, and
    prints the naive and aligned barriers; writes the curves to ``out`` (a PNG; None: no plot).

    Returns:
        A :class:`DemoResult`.
    """
    import torch
    import torch.nn.functional as F

    import rebasin_rs.torch as rbt

    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))  # noqa: E731
    progress = (not quiet) and sys.stderr.isatty()
    x, y, xt, yt = load_mnist1d()
    say(f"MNIST-1D: {len(x)} training and {len(xt)} test sequences of length {x.shape[1]}")
    models = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        models.append(train(mlp(width), x, y, epochs=epochs, seed=s, progress=progress))
    a, b = models

    def evaluate(m):
        with torch.no_grad():
            out_tr, out_te = m(x), m(xt)
        return {
            "train loss": float(F.cross_entropy(out_tr, y)),
            "accuracy (train)": float((out_tr.argmax(1) == y).float().mean()),
            "accuracy (test)": float((out_te.argmax(1) == yt).float().mean()),
        }

    for name, m in (("A", a), ("B", b)):
        e = evaluate(m)
        say(f"model {name}: train loss {e['train loss']:.3f}, train accuracy {e['accuracy (train)']:.1%}, "
            f"test accuracy {e['accuracy (test)']:.1%}")
    t = time.perf_counter()
    b_aligned, res = rbt.align(a, b, x[:1])
    say(f"weight matching: {len(res.perms)} permutations, {res.sweeps} sweeps, {time.perf_counter() - t:.2f} s")
    naive = rbt.interpolation_curve(a, b, evaluate, alphas=alphas, progress=progress)
    aligned = rbt.interpolation_curve(a, b_aligned, evaluate, alphas=alphas, progress=progress)
    mid = alphas // 2
    rows = [(f"{m} barrier", f"{naive.barriers[m]:.3f}", f"{aligned.barriers[m]:.3f}") for m in naive.metrics]
    rows += [(f"{m} at alpha 0.5", f"{naive.metrics[m][mid]:.1%}", f"{aligned.metrics[m][mid]:.1%}")
             for m in ("accuracy (train)", "accuracy (test)")]
    col = max(len(r[0]) for r in rows)  # the labels are longer than any fixed column guessed them
    say("")
    say(f"{'':{col}s} {'naive':>10s} {'aligned':>10s}")
    for label, n, al in rows:
        say(f"{label:{col}s} {n:>10s} {al:>10s}")
    ratio = naive.barriers["train loss"] / max(aligned.barriers["train loss"], 1e-12)
    say(f"weight matching divides the train-loss barrier by {ratio:.1f}")
    path = None
    if out:
        path = rbt.plot_curves({"naive": naive, "weight matching": aligned}, out,
                               title=f"MNIST-1D, MLP {width}x3: interpolating two models")
        say(f"curves written to {path}")
    seconds = time.perf_counter() - t0
    say(f"demo took {seconds:.1f} s")
    return DemoResult(naive=naive, aligned=aligned, seconds=seconds, plot=path)


if __name__ == "__main__":
    run_demo()

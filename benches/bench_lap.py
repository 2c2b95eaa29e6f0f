"""Side-by-side linear assignment benchmark: rebasin_rs against scipy, lapx and lapjv.

Every solver runs in this one process on the same matrices; times are medians of ``--repeats``
runs; every peer's objective is checked against ours. Prints Markdown tables of times and ratios
(peer time / our time: above 1 means we are faster).

Usage:
    python benches/bench_lap.py                    # full run (several minutes; sizes up to 16384)
    python benches/bench_lap.py --quick            # a small side-by-side comparison (seconds)
    python benches/bench_lap.py --sizes 4096 --kinds uniform rank8 --out results.md
    python benches/bench_lap.py --sizes 1000 2000 --kinds constant binary few int10 int100 int1000
    python benches/bench_lap.py --sizes 256 --kinds uniform --tiny 2 4 8 16 32 --warm-n 0

Kinds: ``uniform``, ``rank8`` (low rank), ``wm`` (a weight-matching cost, maximised) and the
tie-heavy ``constant``, ``binary`` (0/1), ``few`` (0..3), ``int10``, ``int100``, ``int1000``
(integers in 0..k) and ``quarter`` (integers in 0..n/4), on which solvers that break ties
blindly degrade to cubic time.

Peers: ``pip install ".[bench]"`` (scipy, lapx, lapjv). ``lapx`` installs the module ``lap`` with
``lapjv``, ``lapjvs`` and the Rust ``lapjvr``; do not install ``lap`` beside it. Peers that are
missing are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np
from _machine import cpu_name

import rebasin_rs as rb

Solver = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _peers() -> tuple[dict[str, Solver], list[str]]:
    """Peers as functions of a *minimisation* cost matrix returning (rows, cols)."""
    peers: dict[str, Solver] = {}
    notes = []
    try:
        from scipy.optimize import linear_sum_assignment

        peers["scipy"] = linear_sum_assignment
    except ImportError:
        notes.append("scipy not installed")
    try:
        import lap

        if hasattr(lap, "lapjvr"):
            peers["lapx.lapjvr"] = lambda c: lap.lapjvr(c, return_cost=False)
            peers["lapx.lapjvs"] = lambda c: lap.lapjvs(c, return_cost=False)
        peers["lapx.lapjv"] = lambda c: _x_to_pairs(lap.lapjv(c)[1])
    except ImportError:
        notes.append("lapx not installed")
    try:
        import lapjv

        peers["lapjv"] = lambda c: _x_to_pairs(lapjv.lapjv(c)[0])
    except ImportError:
        notes.append("lapjv not installed")
    return peers, notes


def _x_to_pairs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(len(x)), np.asarray(x)


# Random classes, then tie-heavy ones (see make_cost).
KINDS = ["uniform", "wm", "rank8", "constant", "binary", "few", "int10", "int100", "int1000", "quarter"]


def make_cost(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Returns (matrix, maximize)."""
    if kind == "uniform":
        return rng.random((n, n)), False
    if kind == "rank8":
        return rng.random((n, 8)) @ rng.random((8, n)), False
    # Tie-heavy classes: many equal reduced costs, where a solver that breaks ties blindly
    # degrades to cubic time (integer costs from counts, pruned or quantised weights).
    if kind == "constant":
        return np.ones((n, n)), False
    if kind == "binary":
        return rng.integers(0, 2, size=(n, n)).astype(np.float64), False
    if kind == "few":
        return rng.integers(0, 4, size=(n, n)).astype(np.float64), False
    if kind == "quarter":
        # Integers in 0..n/4: a few ties per row at every size, the hardest class for
        # shortest-path solvers (plateaus of equal distances).
        return rng.integers(0, max(n // 4, 1), size=(n, n)).astype(np.float64), False
    if kind.startswith("int"):
        # int10, int100, int1000: integers in 0..k.
        return rng.integers(0, int(kind[3:]), size=(n, n)).astype(np.float64), False
    if kind == "wm":
        # Weight matching: maximise A B^T where B is a noisy, permuted copy of A (rows are units,
        # columns their incoming weights).
        d = 512
        a = rng.standard_normal((n, d))
        b = a[rng.permutation(n)] + 6.0 * rng.standard_normal((n, d))
        return a @ b.T, True
    raise ValueError(f"unknown kind {kind!r}")


def timed(f: Callable[[], object], repeats: int) -> tuple[float, object]:
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def machine() -> str:
    return f"{cpu_name()}, Python {platform.python_version()}, numpy {np.__version__}"


def run_table(sizes, kinds, repeats, peers, skip_after, out) -> None:
    names = list(peers)
    out("| kind | n | rebasin_rs (s) | " + " | ".join(f"{p} (s, ratio)" for p in names) + " |")
    out("|" + "---|" * (3 + len(names)))
    slow: dict[tuple[str, str], float] = {}
    for kind in kinds:
        for n in sizes:
            rng = np.random.default_rng(n)
            c, maximize = make_cost(kind, n, rng)
            neg = -c if maximize else c  # peers minimise; negation is outside the timing
            t_rb, (r, cc) = timed(lambda: rb.linear_sum_assignment(c, maximize=maximize), repeats)
            best = float(neg[r, cc].sum())
            cells = []
            for p in names:
                if p == "scipy" and n > 8192:
                    cells.append("skipped")
                    continue
                if slow.get((kind, p), 0.0) > skip_after:
                    cells.append(f"skipped (>{skip_after:.0f} s at smaller n)")
                    continue
                t, (pr, pc) = timed(lambda: peers[p](neg), repeats)
                slow[(kind, p)] = t
                obj = float(neg[np.asarray(pr), np.asarray(pc)].sum())
                ok = abs(obj - best) <= 1e-9 * max(1.0, abs(best))
                flag = "" if ok else f" objective {obj:.12g} vs ours {best:.12g}!"
                cells.append(f"{t:.4f} ({t / t_rb:.2f}x){flag}")
            out(f"| {kind} | {n} | {t_rb:.4f} | " + " | ".join(cells) + " |")


def run_tiny(sizes, repeats, peers, out) -> None:
    """Per-call time on tiny uniform matrices (object tracking, small matchings in a loop), where
    the cost of the call itself dominates: each time is the median over ``repeats`` of the
    mean of a loop of calls."""
    out("")
    out("Tiny matrices: microseconds per call (uniform costs; median of loops of 5000 calls).")
    out("")
    names = list(peers)
    out("| n | rebasin_rs (us) | " + " | ".join(f"{p} (us, ratio)" for p in names) + " |")
    out("|" + "---|" * (2 + len(names)))
    calls = 5000

    def per_call(f: Callable[[], object]) -> float:
        t, _ = timed(lambda: [f() for _ in range(calls)], repeats)
        return t / calls * 1e6

    for n in sizes:
        c = np.random.default_rng(n).random((n, n))
        ours = per_call(lambda: rb.linear_sum_assignment(c))
        cells = [f"{(t := per_call(lambda: peers[p](c))):.2f} ({t / ours:.2f}x)" for p in names]
        out(f"| {n} | {ours:.2f} | " + " | ".join(cells) + " |")


def run_warm(n, repeats, out) -> None:
    out("")
    out(f"Warm vs cold re-solve at n={n}: the matrix plus Gaussian noise of 1% of its standard "
        "deviation, solved cold and warm-started from the previous solution.")
    out("")
    out("| kind | pairs changed | cold (s) | warm (s) | speed-up |")
    out("|---|---|---|---|---|")
    for kind in ["wm", "uniform"]:
        rng = np.random.default_rng(12345)
        c, maximize = make_cost(kind, n, rng)
        first = rb.solve_lap(c, maximize=maximize)
        c2 = c + 0.01 * c.std() * rng.standard_normal(c.shape)
        t_cold, cold = timed(lambda: rb.solve_lap(c2, maximize=maximize), repeats)
        t_warm, warm = timed(lambda: rb.solve_lap(c2, maximize=maximize, warm_start=first), repeats)
        assert abs(cold.objective - warm.objective) <= 1e-9 * abs(cold.objective), "warm != cold"
        changed = float(np.mean(cold.col_ind != first.col_ind))
        out(f"| {kind} | {changed:.1%} | {t_cold:.4f} | {t_warm:.4f} | {t_cold / t_warm:.1f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 8192, 16384])
    ap.add_argument("--kinds", nargs="+", default=KINDS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm-n", type=int, default=4096)
    ap.add_argument("--skip-after", type=float, default=60.0,
                    help="skip a peer at larger sizes once one of its solves took this long (s)")
    ap.add_argument("--tiny", type=int, nargs="*", default=[2, 4, 8, 16, 32],
                    help="sizes of the per-call table of tiny matrices (none: skip it)")
    ap.add_argument("--quick", action="store_true", help="sizes 256 and 1024, warm at 1024")
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.warm_n = [256, 1024], 1024
    lines: list[str] = []

    def out(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    peers, notes = _peers()
    out(f"Machine: {machine()}; rebasin_rs {rb.__version__}; median of {args.repeats} runs; "
        "ratio = peer time / rebasin_rs time.")
    for note in notes:
        out(f"Note: {note}; skipped.")
    out("")
    run_table(args.sizes, args.kinds, args.repeats, peers, args.skip_after, out)
    if args.tiny:
        run_tiny(args.tiny, max(args.repeats, 5), peers, out)
    if args.warm_n:
        run_warm(args.warm_n, max(args.repeats, 5), out)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

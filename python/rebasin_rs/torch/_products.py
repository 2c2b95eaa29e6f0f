"""The engine's cost products computed by torch where the weights are (a GPU).

The Rust engine keeps the whole algorithm (coordinate descent, kept costs and their incremental
updates, warm-started assignments on the CPU, the stopping rule); this object only answers its
three questions about the weights it holds (see ``rebasin_core::matching::Products``):

- ``add_products(n, requests)``: the ``n x n`` sum of products ``A^(axis)[a] (B^(axis)[b] -
  B^(axis)[b_old])^T``, computed on the device in float32 (TF32 off unless asked) and sent back
  as one float32 numpy array: only costs cross to the CPU, never weights;
- ``objective(parts)``: ``sum <A_p, B_p read at b>`` accumulated in float64;
- ``first_non_finite(params)``: the first parameter holding a NaN or an inf.

Weights stay in their stored dtype on their device; each product widens the slices it reads.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["TorchProducts", "matmul_precision"]

# Values of the float64 objective's products reduced at a time: bounds the float64 copies the
# objective makes of one tensor (an LLM's 32000 x 4096 embedding would be 1 GiB whole).
_DOT_BLOCK = 1 << 24


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """float32 matmuls in full precision (``"highest"``) or, with ``tf32``, TF32 (``"high"``) for
    the duration; the caller's setting is restored after."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


class TorchProducts:
    """Holds model A's and B's weights (detached tensors on one device, spec order, size-1 axes
    dropped as the engine sees them) and computes the engine's products with torch there.

    Args:
        a: Model A's tensors, or loaders: callables with a ``shape`` attribute that return the
            tensor when called (a checkpoint read tensor by tensor, dropped after each use, so a
            model is never held whole).
        b: Model B's, of the same shapes.
    """

    def __init__(self, a: Sequence, b: Sequence) -> None:
        self.a = list(a)
        self.b = list(b)
        first = self.a[0] if self.a else None
        self.device = torch.device(getattr(first, "device", None) or "cpu")
        self.calls = 0

    def shapes(self) -> list[tuple[int, ...]]:
        """Each parameter's shape, as the engine sees it."""
        return [tuple(x.shape) for x in self.a]

    @staticmethod
    def _get(x) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else x()

    def _index(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(idx).to(self.device)

    def _read(self, t: torch.Tensor, shape: Sequence[int], idx: Sequence[np.ndarray | None],
              axis: int | None) -> torch.Tensor:
        """``t`` viewed under ``shape``, axis ``k`` read at ``idx[k]`` (all of it for None); with
        ``axis``, that axis first and the rest flattened: an ``(n, -1)`` float32 matrix."""
        x = t.reshape(tuple(shape))
        for k, i in enumerate(idx):
            if i is not None:
                x = x.index_select(k, self._index(i))
        if axis is None:
            return x
        return x.movedim(axis, 0).reshape(x.shape[axis], -1).float()

    def add_products(self, n: int, requests: Sequence[tuple]) -> np.ndarray:
        """The ``(n, n)`` float32 sum of the requested products (see the module doc)."""
        self.calls += 1
        total = torch.zeros((n, n), dtype=torch.float32, device=self.device)
        for p, shape, axis, ia, ib, iold in requests:
            tb = self._get(self.b[p])
            xa = self._read(self._get(self.a[p]), shape, ia, axis)
            xb = self._read(tb, shape, ib, axis)
            if iold is not None:
                xb = xb - self._read(tb, shape, iold, axis)
            total.addmm_(xa, xb.T)
            del tb, xa, xb
        return total.cpu().numpy()

    def objective(self, parts: Sequence[tuple]) -> float:
        """``sum <A_p, B_p read at idx>`` over ``(p, idx)``, accumulated in float64."""
        self.calls += 1
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for p, idx in parts:
            a = self._get(self.a[p]).reshape(-1)
            tb = self._get(self.b[p])
            b = self._read(tb, tb.shape, idx, None).reshape(-1)
            for lo in range(0, a.numel(), _DOT_BLOCK):
                hi = lo + _DOT_BLOCK
                total += torch.dot(a[lo:hi].double(), b[lo:hi].double())
        return float(total)

    def first_non_finite(self, params: Sequence[int]) -> tuple[int, str] | None:
        """The first ``(p, 'A' or 'B')`` among ``params`` holding a NaN or an inf, or None."""
        self.calls += 1
        if not params:
            return None
        # One device-to-host transfer for all of them.
        flags = torch.stack([torch.stack([torch.isfinite(self._get(t[p])).all() for t in (self.a, self.b)])
                             for p in params]).cpu()
        for k, p in enumerate(params):
            for m, model in enumerate("AB"):
                if not bool(flags[k, m]):
                    return p, model
        return None

"""PyTorch adapters: infer a model's permutation spec, align two models, apply permutations on
the model's own device, check that a spec keeps the function, and merge.

Requires torch (the ``torch`` extra: ``pip install ".[torch]"`` from a clone, see the README's
Install section). This module only re-exports:
``_utils`` (devices, inputs, batches, eval mode, progress), ``_apply`` (extract, permute,
check), ``infer`` (the tracer and its op-rule registry), ``_methods`` (activation matching, STE),
``_align`` (align and method dispatch), ``_merge`` (interpolation, barriers, BatchNorm reset,
REPAIR, MergeMany), ``_zipit`` (ZipIt!); each imports only the rooms listed before it.

Example:
    >>> import torch, rebasin_rs.torch as rbt
    >>> make = lambda: torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> a, b = make(), make()
    >>> b_aligned, result = rbt.align(a, b, torch.randn(1, 4))
    >>> sorted(result.perms)
    ['P_0']
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rebasin_rs.torch needs PyTorch: pip install torch (or the torch extra, pip install '.[torch]' "
        "from a clone of rebasin-rs)"
    ) from e

from rebasin_rs.torch._align import align
from rebasin_rs.torch._apply import check_equivalence, extract_weights, permute_model
from rebasin_rs.torch._merge import (
    InterpolationCurve,
    MergeManyModels,
    interpolation_curve,
    merge,
    merge_many,
    plot_curves,
    repair,
    reset_bn_stats,
)
from rebasin_rs.torch._zipit import ZipResult, zipit
from rebasin_rs.torch.infer import (
    AbstractTensor,
    Call,
    Coverage,
    infer_spec,
    register_rule,
    spec_coverage,
    unregister_rule,
)

__all__ = [
    "AbstractTensor",
    "Call",
    "Coverage",
    "InterpolationCurve",
    "MergeManyModels",
    "ZipResult",
    "align",
    "check_equivalence",
    "extract_weights",
    "infer_spec",
    "interpolation_curve",
    "merge",
    "merge_many",
    "permute_model",
    "plot_curves",
    "register_rule",
    "repair",
    "reset_bn_stats",
    "spec_coverage",
    "unregister_rule",
    "zipit",
]

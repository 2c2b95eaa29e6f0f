"""The one exception family of rebasin-rs."""

from __future__ import annotations

__all__ = ["RebasinError"]


class RebasinError(ValueError):
    """Bad input to rebasin-rs, or a failure while matching: the spec does not fit the parameters,
    a permutation or warm start is malformed, a weight is NaN, a cost matrix is infeasible.

    A ``ValueError``, so ``except ValueError`` keeps working. Raised alike by the Rust engine and by
    the Python checks; the message names the user's own permutations and parameters and says how to
    fix the input. Inputs of the wrong *type* raise ``TypeError`` instead (as scipy does).

    Attributes:
        group: The name of the permutation (group) concerned, or None.
        param: The name of the parameter concerned, or None.
        axis: The axis of ``param`` concerned, or None.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> spec = rb.specs.mlp(["fc1", "fc2"])
        >>> a = {"fc1.weight": np.ones((4, 3)), "fc1.bias": np.ones(4), "fc2.weight": np.ones((2, 4))}
        >>> try:
        ...     rb.weight_matching(spec, a, {k: v for k, v in a.items() if k != "fc2.weight"})
        ... except rb.RebasinError as e:
        ...     print(e.param)
        fc2.weight
    """

    def __init__(self, message: str, group: str | None = None, param: str | None = None,
                 axis: int | None = None) -> None:
        super().__init__(message)
        self.group = group
        self.param = param
        self.axis = axis

    def __reduce__(self):
        # Pickled with its fields (the default keeps ``args``, the message alone), so that errors
        # raised in worker processes arrive whole.
        return type(self), (str(self), self.group, self.param, self.axis)

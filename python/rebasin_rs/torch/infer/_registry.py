"""The op-rule registry: what the tracer knows about each operation.

A *rule* is one function ``rule(call) -> value``: it reads the call's arguments (abstract tensors,
parameters, plain Python values), ties unit axes together through the :class:`Call`'s methods and
returns the abstract output (an :class:`AbstractTensor`, a list of them, or None for an output that
is not a tensor, such as ``x.size()``). A rule that cannot handle a call returns
``NotImplemented``; the tracer then fixes every unit of its inputs and output (never permuted),
which is always safe.

Rules are keyed by what they match:

- a module type (``nn.Linear``; subclasses match too): the module's call is one node of the
  graph; a module type registered by a user is also kept whole by torch.fx (a leaf);
- a function (``torch.nn.functional.linear``, a function wrapped with ``torch.fx.wrap``) or an
  ATen operator (``torch.ops.aten.linear`` or one of its overloads);
- a name: a tensor method (``"view"``) or the name shared by a function, a method and an ATen
  operator (``"linear"`` matches ``F.linear`` in a torch.fx graph and ``aten.linear`` in a
  torch.export graph). The built-in rules are registered by name, so both tracers share them.

User rules (:func:`register_rule`) are looked up before the built-in ones.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from rebasin_rs._errors import RebasinError
from rebasin_rs.torch.infer._graph import AbstractTensor, Axis, ParamRef, UnitGraph

Rule = Callable[["Call"], Any]


class Call:
    """One call of the traced graph as a rule sees it.

    Attributes:
        op: The operation's name (``"linear"``, ``"view"``, ...); None for a module call until a
            rule delegates it to an operation.
        module: The module called (for module rules), else None.
        out_shape: The output's shape (a tuple of ints), or a list of shapes for several outputs,
            from shape propagation.
        args: The positional arguments: :class:`AbstractTensor` for tensors computed in the
            graph, :class:`ParamRef` for parameters and buffers, Python values otherwise.
        kwargs: The keyword arguments, likewise.
        units: The unit-variable graph of this pass (built-in rules reach it directly; the
            methods below are what a user rule needs).
    """

    def __init__(self, units: UnitGraph, op: str | None, args: tuple, kwargs: dict, out_shape: Any,
                 module: nn.Module | None = None, prefix: str = "",
                 ref: Callable[[str], ParamRef] | None = None) -> None:
        self.units, self.op, self.out_shape = units, op, out_shape
        self.args, self.kwargs = tuple(args), dict(kwargs)
        self.module, self.prefix, self._ref = module, prefix, ref

    # -- reading arguments ------------------------------------------------------------------
    def arg(self, name: str, pos: int | None = None, default: Any = None) -> Any:
        """An argument by keyword name (ATen schema names, keywords) or by position."""
        if name in self.kwargs:
            return self.kwargs[name]
        if pos is not None and pos < len(self.args):
            return self.args[pos]
        return default

    def values(self) -> list:
        """Every argument, positional then keyword."""
        return list(self.args) + list(self.kwargs.values())

    def tensor(self, x: Any) -> Any:
        """``x`` as an :class:`AbstractTensor` when it is a tensor or a parameter, else as is."""
        return self.units.as_tensor(x)

    def input(self) -> AbstractTensor | None:
        """The first tensor argument (``input`` / ``self``), or None when it is not a tensor."""
        x = self.tensor(self.arg("input", 0, self.arg("self")))
        return x if isinstance(x, AbstractTensor) else None

    def param(self, name: str) -> ParamRef | None:
        """The module's parameter or buffer ``name`` (relative to the module, e.units. ``"weight"``
        or ``"gate.weight"``); None when the module has no such tensor (a Linear without bias)."""
        if self.module is None or self._ref is None:
            raise RebasinError("Call.param: only a module rule has parameters by name")
        obj: Any = self.module
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if not isinstance(obj, torch.Tensor):
            return None
        return self._ref(f"{self.prefix}.{name}" if self.prefix else name)

    # -- building the result ----------------------------------------------------------------
    def new_units(self, size: int) -> Axis:
        """A fresh axis of hidden units (a layer's outputs), counted in the spec's coverage."""
        ax = self.units.axis(size, key="out")
        self.units.producers.append(ax)
        return ax

    def fixed_axis(self, size: int, why: str) -> Axis:
        """A fresh axis that is never permuted, for the reason ``why``."""
        return self.units.axis(size, why)

    def bind(self, param: Any, axes: list, contract: tuple = ()) -> None:
        """Declares the axes of a parameter (a :class:`ParamRef`, a name for module rules, or
        None for an absent one) at this use, e.units. a Linear's weight is ``[out, in]``;
        ``contract``: the axes summed against the input's units (a Linear weight's axis 1), which
        merging that is not a permutation (ZipIt!) treats apart from per-unit axes."""
        if isinstance(param, str):
            param = self.param(param)
        self.units.bind(param, list(axes), contract)

    def tie(self, a: Axis, b: Axis) -> Axis:
        """Declares that two axes carry the same units (a residual add); returns ``a``."""
        return self.units.unify(a, b)

    def fix(self, x: Any, why: str) -> None:
        """Keeps every unit of ``x`` (tensors, parameters, axes) where it is, for ``why``."""
        if isinstance(x, tuple) and all(isinstance(s, tuple) for s in x):
            self.units.fix_axes([x], why)
        else:
            self.units.fix_value(x, why)

    def size(self, ax: Axis) -> int:
        """The number of units along an axis."""
        return self.units.size(ax)

    def delegate(self, op: str, args: tuple, kwargs: dict | None = None) -> Any:
        """Runs the built-in rule of operation ``op`` on these arguments instead (a module call
        read as the function it computes); NotImplemented when there is none."""
        self.op, self.args, self.kwargs = op, tuple(args), dict(kwargs or {})
        rule = _BUILTIN.names.get(op)
        return NotImplemented if rule is None else run_rule(rule, self)


class _Table:
    def __init__(self) -> None:
        self.names: dict[str, Rule] = {}
        self.modules: dict[type, Rule] = {}
        self.targets: dict[Any, Rule] = {}  # functions and ATen operators


# Built-in rules that only read calls with one output tensor: others are declined before they run.
_TENSOR_ONLY: set = set()


_BUILTIN, _USER = _Table(), _Table()


def _add(table: _Table, target: Any, rule: Rule) -> None:
    if isinstance(target, str):
        table.names[target] = rule
    elif isinstance(target, type) and issubclass(target, nn.Module):
        table.modules[target] = rule
    elif callable(target):
        table.targets[target] = rule
    else:
        raise TypeError(
            "register_rule: target must be a torch.nn.Module subclass, a function, an ATen operator "
            f"or an operation name, got {type(target).__name__}"
        )


def builtin(*targets: Any, any_shape: bool = False) -> Callable[[Rule], Rule]:
    """Registers a built-in rule. Unless ``any_shape``, a call whose output is not one tensor
    (no shape, or several outputs) is declined before the rule runs."""

    def deco(rule: Rule) -> Rule:
        for t in targets:
            _add(_BUILTIN, t, rule)
        if not any_shape:
            _TENSOR_ONLY.add(rule)
        return rule

    return deco


def register_rule(target: Any, rule: Rule | None = None) -> Any:
    """Teaches the tracer an operation it does not know, or overrides how it reads one.

    Without a rule, :func:`infer_spec` keeps every unit that reaches an unknown operation fixed
    (with a warning naming it). A rule says how the operation moves units instead, and is used
    before any built-in rule. Usable as a decorator.

    Args:
        target: What the rule matches: a ``torch.nn.Module`` subclass (its instances are then kept
            whole while tracing, and the rule sees ``call.module``), a function or ATen operator
            called in the traced graph, or an operation / tensor-method name.
        rule: ``rule(call) -> output``: reads ``call.input()`` / ``call.arg(...)`` /
            ``call.param(...)``, declares axes with ``call.new_units``, ``call.bind``,
            ``call.tie``, ``call.fix``, and returns the output as an ``AbstractTensor`` (or
            ``NotImplemented`` to leave the call fixed).

    Returns:
        ``rule`` (or, without it, a decorator taking it).

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> class Scale(torch.nn.Module):  # y = x * w, one weight per feature
        ...     def __init__(self, n):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.ones(n))
        ...     def forward(self, x):
        ...         return x * self.w
        >>> @rbt.register_rule(Scale)
        ... def scale_rule(call):
        ...     x = call.input()
        ...     call.bind("w", [x.axes[-1]])
        ...     return x
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), Scale(4), torch.nn.Linear(4, 1))
        >>> rbt.infer_spec(net, torch.randn(1, 2)).groups["P_0"]
        (('0.weight', 0), ('0.bias', 0), ('1.w', 0), ('2.weight', 1))
        >>> rbt.unregister_rule(Scale)
    """
    if rule is None:
        return lambda r: register_rule(target, r)
    if not callable(rule):
        raise TypeError(f"register_rule: rule must be callable, got {type(rule).__name__}")
    if isinstance(target, torch._ops.OpOverload):
        target = target.overloadpacket
    _add(_USER, target, rule)
    return rule


def unregister_rule(target: Any) -> None:
    """Removes the user rule registered for ``target`` (no error when there is none)."""
    if isinstance(target, torch._ops.OpOverload):
        target = target.overloadpacket
    for table in (_USER.names, _USER.modules, _USER.targets):
        table.pop(target, None)


def user_module_types() -> tuple[type, ...]:
    """Module types with a user rule: torch.fx keeps them whole (leaves)."""
    return tuple(_USER.modules)


def find_rule(module: nn.Module | None, target: Any, name: str | None) -> Rule | None:
    """The rule for a module call (by type, most derived first), or for a function / method
    call (by target, then by name); user rules first."""
    if module is not None:
        for cls in type(module).__mro__:
            for table in (_USER, _BUILTIN):
                if cls in table.modules:
                    return table.modules[cls]
        return None
    packet = getattr(target, "_overloadpacket", None)
    for key in (target, packet):
        if key is not None and _hashable(key) and key in _USER.targets:
            return _USER.targets[key]
    for table in (_USER, _BUILTIN):
        if name in table.names:
            return table.names[name]
    return None


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _is_tensor_shape(shape: Any) -> bool:
    return isinstance(shape, tuple) and not (shape and not isinstance(shape[0], int))


def run_rule(rule: Rule, call: Call) -> Any:
    """The rule's output, or NotImplemented."""
    if rule in _TENSOR_ONLY and not _is_tensor_shape(call.out_shape):
        return NotImplemented
    return rule(call)

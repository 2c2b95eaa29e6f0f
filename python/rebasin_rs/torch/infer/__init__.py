"""Permutation specs inferred from a traced graph.

Rooms: ``_graph`` (union-find over unit variables, abstract tensors, parameter binding),
``_registry`` (the op-rule registry and what a rule sees), ``_rules`` / ``_rules_views`` /
``_rules_attention`` / ``_modules`` (the built-in rules), ``_trace`` (torch.fx / torch.export
tracing, shape propagation, the passes that run the rules on a ``torch.fx.Interpreter``),
``_result`` (the spec and its coverage), ``_infer`` (the public functions).
"""

from rebasin_rs.torch.infer._graph import AbstractTensor, ParamRef
from rebasin_rs.torch.infer._infer import infer_spec, spec_coverage, trace_groups
from rebasin_rs.torch.infer._registry import Call, register_rule, unregister_rule
from rebasin_rs.torch.infer._result import Coverage

__all__ = [
    "AbstractTensor",
    "Call",
    "Coverage",
    "ParamRef",
    "infer_spec",
    "register_rule",
    "spec_coverage",
    "trace_groups",
    "unregister_rule",
]

"""Tracing a model (torch.fx, torch.export as fallback), shape propagation, and the passes that
run the op rules over the traced graph."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch
from torch import nn

# Importing the rule modules registers their rules.
import rebasin_rs.torch.infer._modules  # noqa: F401
import rebasin_rs.torch.infer._rules  # noqa: F401
import rebasin_rs.torch.infer._rules_attention  # noqa: F401
import rebasin_rs.torch.infer._rules_groups  # noqa: F401
import rebasin_rs.torch.infer._rules_views  # noqa: F401
from rebasin_rs._errors import RebasinError
from rebasin_rs.torch._utils import device_of, eval_mode, example_args, to_device, without_cache
from rebasin_rs.torch.infer._graph import INPUT, OUTPUT, AbstractTensor, ParamRef, UnitGraph
from rebasin_rs.torch.infer._registry import Call, find_rule, run_rule, user_module_types

# Refinement passes at most: each one can split unit variables one level further (heads out of a
# projection, then key/value groups out of the heads).
MAX_PASSES = 12


def _out_shape(meta: Any) -> Any:
    """Shape(s) of a node's output from fx's ShapeProp ``tensor_meta`` or export's ``val``."""
    if meta is None:
        return None
    if hasattr(meta, "shape") and (not isinstance(meta, (list, tuple)) or hasattr(meta, "_fields")):
        return tuple(int(d) for d in meta.shape)
    if isinstance(meta, (list, tuple)):
        return [_out_shape(m) for m in meta]
    return None


def _op_name(node: torch.fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return str(t)
    packet = getattr(t, "_overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(t, "__name__", str(t))


def _named_args(node: torch.fx.Node, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """ATen operators' arguments by their schema's names (``self`` read as ``input``)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return tuple(args), dict(kwargs)
    named = dict(kwargs)
    for s, v in zip(schema.arguments, args):
        named[s.name] = v
    if "self" in named:
        named["input"] = named.pop("self")
    if node.target.__name__.startswith("embedding") and "indices" in named:
        named["input"] = named.pop("indices")
    return (), named


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _small_index(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 1 and x.numel() <= 4096 and x.dtype in (
        torch.int64, torch.int32, torch.int16, torch.int8)  # not uint8: torch reads it as a mask


class RuleInterpreter(torch.fx.Interpreter):
    """Runs the op rules over a graph: the value of every node is its abstract output."""

    def __init__(self, gm: torch.fx.GraphModule, units: UnitGraph, placeholders: dict[str, str]) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.units, self.placeholders = units, placeholders
        self.index = -1

    def _ref(self, name: str) -> ParamRef:
        t = _get_attr(self.module, name)
        self._note_constant(name, t)
        return ParamRef(name, tuple(t.shape))

    def _note_constant(self, name: str, t: torch.Tensor) -> None:
        """Records a tensor outside the state_dict that holds one value everywhere (EVA-02's zero
        ``k_bias`` buffer, concatenated into its q/k/v bias at run time): any permutation leaves
        it as it is, so it need not be written back and does not hold its units."""
        if name in self.units.state_names or t.is_meta or not t.numel():
            return
        with torch.no_grad():
            flat = t.detach().reshape(-1)
            if bool((flat == flat[0]).all()):
                self.units.constants.add(name)

    def _fresh(self, shape: Any, why: str) -> Any:
        if isinstance(shape, tuple):
            return AbstractTensor([self.units.axis(d, why) for d in shape])
        if isinstance(shape, list):
            return [self._fresh(s, why) for s in shape]
        return None

    def run_node(self, n: torch.fx.Node) -> Any:
        units = self.units
        self.index += 1
        units.node = self.index
        shape = _out_shape(n.meta.get("tensor_meta", n.meta.get("val")))
        if n.op == "placeholder":
            if n.name in self.placeholders:  # a parameter or buffer lifted by torch.export
                return ParamRef(self.placeholders[n.name], shape if isinstance(shape, tuple) else ())
            x = self._fresh(shape, INPUT)
            const = self.module.meta.get("lifted_constants", {}).get(n.name)
            if isinstance(x, AbstractTensor) and _small_index(const):
                x.value = const  # an index written in the code (Falcon's qkv[..., [-2], :])
            return x
        if n.op == "get_attr":
            obj = _get_attr(self.module, str(n.target))
            if not isinstance(obj, torch.Tensor):
                return None
            self._note_constant(str(n.target), obj)
            return ParamRef(str(n.target), tuple(obj.shape))
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "output":
            units.fix_value(args[0], OUTPUT)
            return None
        if n.op == "call_module":
            module = self.fetch_attr(str(n.target))
            call = Call(units, None, args, kwargs, shape, module, str(n.target), self._ref)
            rule = find_rule(module, None, None)
            what = f"module {type(module).__name__}"
        else:
            op = _op_name(n)
            call = Call(units, op, *_named_args(n, args, kwargs), shape)
            rule = find_rule(None, n.target, op)
            what = f"operation {op}"
        value = NotImplemented if rule is None else run_rule(rule, call)
        units.node_ops[n.name] = call.op
        if value is NotImplemented:
            # Unknown, or a case its rule does not handle: nothing that touches it moves.
            why = f"unsupported {what}"
            units.fix_value(list(args) + list(kwargs.values()), why)
            return self._fresh(shape, why)
        return value


def run_rules(gm: torch.fx.GraphModule, placeholders: dict[str, str], state_names: set[str]) -> UnitGraph:
    """The unit graph of ``gm``, refined pass after pass until no operation asks for a unit
    variable to be split (each pass is a plain run of the rules over the graph)."""
    plan: dict = {}
    for _ in range(MAX_PASSES):
        units = UnitGraph(state_names, plan)
        interp = RuleInterpreter(gm, units, placeholders)
        interp.run(enable_io_processing=False)
        units.env = {node.name: value for node, value in interp.env.items()}
        new = units.next_plan()
        if len(new) == len(plan):
            break
        plan = new
    return units


@contextlib.contextmanager
def _quiet():
    """torch.export logs its failures (with the graph) before raising; the error we raise says
    what failed in one line, so silence the logs and stderr meanwhile."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _first_line(e: BaseException) -> str:
    """The exception's cause in one short line (ShapeProp wraps the real error in its message)."""
    cause = e.__cause__ or e
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text[:240]}"


def _shape_prop(gm: torch.fx.GraphModule, inputs: list) -> None:
    """Shapes of every node: with fake tensors (no arithmetic: ViT-B at 224x224 took 0.7 s for
    real on 2 cores) and, where an operation has no fake implementation, for real."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with _quiet():
            ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
        return
    except Exception:  # noqa: BLE001 - fall back to running the graph
        pass
    ShapeProp(gm).propagate(*inputs)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, keeping whole the module types that have a user rule."""

    def __init__(self, leaves: tuple[type, ...]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _fx(model: nn.Module, args: tuple, kwargs: dict) -> torch.fx.GraphModule:
    tracer = _Tracer(user_module_types())
    gm = torch.fx.GraphModule(model, tracer.trace(model), type(model).__name__)
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = list(args)
    if kwargs:
        inputs += [kwargs.get(n.target, n.args[0] if n.args else None) for n in phs][len(args):]
    # ShapeProp prints a traceback before raising; the error raised says it in one line.
    with contextlib.redirect_stderr(io.StringIO()):
        _shape_prop(gm, inputs)
    return gm


def graph_inputs(gm: torch.fx.GraphModule, model: nn.Module, args: tuple, kwargs: dict) -> list:
    """The inputs of a graph that :func:`trace` made with torch.export, for running it on
    ``model``'s weights (any model of the traced architecture): for each placeholder the
    parameter or buffer it stands for, a lifted constant, or the next of the call's inputs,
    flattened as torch.export flattens them (``kwargs`` in the traced order)."""
    from torch.utils._pytree import tree_leaves

    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(model.named_buffers(remove_duplicate=False))
    names, constants = gm.meta["state_placeholders"], gm.meta["lifted_constants"]
    leaves = iter(tree_leaves((tuple(args), dict(kwargs))))
    inputs = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        if n.name in names:
            inputs.append(state[names[n.name]])
        elif n.name in constants:
            inputs.append(constants[n.name])
        else:
            inputs.append(next(leaves))
    return inputs


def trace(model: nn.Module, example_inputs: Any) -> tuple[torch.fx.GraphModule, dict[str, str], str]:
    """(graph module, placeholder -> state name, kind): torch.fx first, torch.export after."""
    args, kwargs = example_args(example_inputs)
    device = device_of(model)
    args, kwargs = to_device(args, device), without_cache(model, args, to_device(kwargs, device))
    errors = []
    with eval_mode(model):
        try:
            return _fx(model, args, kwargs), {}, "fx"
        except Exception as e:  # noqa: BLE001 - any tracer failure falls through to export
            errors.append(f"torch.fx: {_first_line(e)}")
        try:
            with _quiet():
                ep = torch.export.export(model, args, kwargs)
            sig = ep.graph_signature
            gm = ep.graph_module
            state = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
            # What runs the graph again (activation matching) needs these: see graph_inputs.
            gm.meta["state_placeholders"] = state
            gm.meta["lifted_constants"] = {ph: ep.constants[name]
                                           for ph, name in sig.inputs_to_lifted_tensor_constants.items()}
            return gm, state, "export"
        except Exception as e:  # noqa: BLE001
            errors.append(f"torch.export: {_first_line(e)}")
    hint = ""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and "decoder_input_ids" not in kwargs:
        hint = ("; an encoder-decoder model needs decoder inputs too: pass example_inputs="
                "{'input_ids': ids, 'decoder_input_ids': ids}")
    raise RebasinError(
        f"infer_spec: could not trace {type(model).__name__} ({'; '.join(errors)}); check that "
        "example_inputs run through the model, or pass spec= a rebasin_rs.PermutationSpec written "
        f"by hand{hint}"
    )

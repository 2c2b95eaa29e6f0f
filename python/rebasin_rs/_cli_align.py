"""The ``rebasin`` command's alignment: checkpoints aligned through the modules --model builds or
through a spec file (``align_state_dicts``), and two checkpoint folders aligned without loading
either model (``align_folders``).

In ``align_folders`` the folders are read tensor by tensor (``_folder.StoredState``: each lookup reads one tensor from
its memory-mapped shard and closes it again): the finiteness check, the weight matching (torch
computes each cost product from the tensors it needs and drops them) and the output, written
shard by shard and tensor by tensor with B's tensors permuted as they are read. The spec comes
from the architecture built on the meta device (no weights) or from a spec file. Peak memory is
then a few tensors and the kept costs (``--max-cost-memory``), not two models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rebasin_rs._cli_models import CliError, _build, _example_input, _is_spec_file, _line, _say, _torch

__all__ = ["align_folders", "align_state_dicts", "check_device", "load_spec"]


class _Permuted(Mapping):
    """B's tensors with the spec's permutations applied, each computed when it is looked up."""

    def __init__(self, spec: Any, perms: dict, state: Any) -> None:
        from rebasin_rs._matching import check_perms

        self.spec, self.state, self.meta = spec, state, state.meta
        self.checked = check_perms(spec, perms, state.meta)

    def __getitem__(self, name: str) -> Any:
        from rebasin_rs._matching import permuted_entries

        return next(iter(permuted_entries(self.spec, self.checked, {name: self.state[name]})))[1]

    def __contains__(self, name: object) -> bool:
        return name in self.meta

    def __iter__(self):
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)


def _check_finite(state: Any, what: str, path: str) -> None:
    """Every float tensor of the folder is finite, read one at a time (as ``cli._load`` checks a
    loaded checkpoint)."""
    import torch

    for name, m in state.meta.items():
        if m.is_floating_point() and not bool(torch.isfinite(state[name]).all()):
            raise CliError(f"{what} {path!r}: {name!r} holds NaN or infinite values")


def _traced_spec(args: Any, state_a: Any, state_b: Any, say) -> Any:
    """The spec of the --model architecture in the folders' stored names, traced on the meta
    device; None when the model cannot run there (older transformers: the caller loads the
    weights instead)."""
    import rebasin_rs.torch as rbt
    from rebasin_rs._hf import stored_names, tie_groups
    from rebasin_rs.cli import _model_names

    names = _model_names(args, list(state_a.meta) + [k for k in state_b.meta if k not in state_a.meta])
    # Builds the modules on meta tensors: every entry the model has must be in the folder.
    model = _build(args, {names[k]: v for k, v in state_a.meta.items()}, "A")
    _build(args, {names[k]: v for k, v in state_b.meta.items()}, "B")
    x = _example_input(args, model)
    try:
        spec = rbt.infer_spec(model, x, warn=not args.quiet)
    except Exception as e:  # noqa: BLE001 - any failure on meta tensors: trace with the weights
        say(f"the model does not trace on the meta device ({_line(e)}); loading the weights to trace it")
        return None
    back = {v: k for k, v in names.items() if k in state_a.meta}
    return stored_names(spec, tie_groups(model), back)


def align_folders(args: Any, say) -> bool:
    """Aligns folder B to folder A into the -o folder, tensor by tensor. Returns False, having
    written nothing, when the spec needs the weights to be traced (the caller then loads them)."""
    import numpy as np

    import rebasin_rs as rb
    from rebasin_rs._folder import StoredState, save_folder
    from rebasin_rs._spec import compare_states

    device = getattr(args, "device", None)
    state_a, state_b = StoredState(args.a, "checkpoint A", device), StoredState(args.b, "checkpoint B", device)
    _check_finite(state_a, "checkpoint A", args.a)
    _check_finite(state_b, "checkpoint B", args.b)
    if _is_spec_file(args.model):
        spec, sizes = load_spec(args, state_a.meta, state_b.meta)
    else:
        spec = _traced_spec(args, state_a, state_b, say)
        if spec is None:
            return False
        try:
            sizes = spec.validate(state_a.meta, state_b.meta)
        except ValueError as e:
            raise CliError(_line(e)) from None
    try:
        compare_states(state_a.meta, state_b.meta, ("checkpoint A", "checkpoint B"))
    except ValueError as e:
        raise CliError(_line(e)) from None
    # Statistics move with their units but do not weigh in the matching.
    learn = [n for n in spec.real_params() if not n.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]
    res = rb.weight_matching(spec.restrict(learn), state_a, state_b, seed=args.seed, max_iter=args.max_iter,
                             max_cost_memory=getattr(args, "max_cost_memory", None), init="forward",
                             products="torch")
    perms = {g: res.perms.get(g, np.arange(n)) for g, n in sizes.items()}
    say(f"weight matching: {len(res.perms)} permutations, {res.sweeps} sweeps, objective {res.objective:.6g}")
    save_folder(_Permuted(spec, perms, state_b), args.output, like=args.a)
    say(f"wrote {args.output}")
    return True


def check_device(args) -> None:
    """--device names a device torch has here (checked before any work)."""
    torch = _torch()
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CliError(f"--device {args.device}: only cpu and cuda are supported")
    args.device = dev


def align_state_dicts(args, sd_a: dict, sd_b: dict, modules=None, example=None, inplace=False) -> dict:
    """B's state dict aligned to A's, with B's names (a tied weight once, as stored), through the
    modules (built from --model if not given; B's is permuted itself with ``inplace``) or a spec
    file."""
    import numpy as np

    import rebasin_rs as rb

    if _is_spec_file(args.model):
        spec, sizes = load_spec(args, sd_a, sd_b)
        # Statistics move with their units but do not weigh in the matching.
        learn = [n for n in spec.real_params() if not n.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]
        device = getattr(args, "device", None)
        if device is not None and device.type != "cpu":
            sd_a, sd_b = ({k: v.to(device) for k, v in sd.items()} for sd in (sd_a, sd_b))
        res = rb.weight_matching(spec.restrict(learn), sd_a, sd_b, seed=args.seed, max_iter=args.max_iter,
                                 max_cost_memory=getattr(args, "max_cost_memory", None),
                                 init="forward")
        perms = {g: res.perms.get(g, np.arange(n)) for g, n in sizes.items()}
        _say(args, f"weight matching: {len(res.perms)} permutations, {res.sweeps} sweeps, "
                   f"objective {res.objective:.6g}")
        return {k: v.to("cpu") for k, v in rb.apply_permutation(spec, perms, sd_b).items()}
    import rebasin_rs.torch as rbt

    a, b = modules or (_build(args, sd_a, "A"), _build(args, sd_b, "B"))
    device = getattr(args, "device", None)
    if device is not None and device.type != "cpu":
        a, b = a.to(device), b.to(device)
    if example is None:
        example = _example_input(args, a)
    try:
        spec = rbt.infer_spec(a, example, warn=not args.quiet)
    except (ValueError, TypeError) as e:
        raise CliError(f"{_line(e)} (check --input-shape / --input-dtype, or pass a spec file as --model)") from None
    aligned, res = rbt.align(a, b, spec=spec, seed=args.seed, max_iter=args.max_iter, inplace=inplace,
                             max_cost_memory=getattr(args, "max_cost_memory", None))
    _say(args, f"weight matching: {len(res.perms)} permutations, {res.sweeps} sweeps, objective {res.objective:.6g}")
    state = aligned.state_dict()
    return {k: state[k].to("cpu") for k in sd_b}


def load_spec(args, sd_a: dict, sd_b: dict):
    import rebasin_rs as rb

    try:
        spec = rb.PermutationSpec.load(args.model)
        sizes = spec.validate(sd_a, sd_b)
    except ValueError as e:
        raise CliError(f"--model {args.model}: {_line(e)}") from None
    return spec, sizes


def merge_state_dicts(args, sds: list, data=None) -> dict:
    """The merge of several state dicts by ``--method`` (mergemany: MergeMany; cycle: Frank-Wolfe
    to one frame; zipit: ZipIt! on ``data``), through modules built from --model or a spec file;
    A's names."""
    import numpy as np

    import rebasin_rs as rb
    from rebasin_rs._merge import _average

    if args.method == "zipit":
        import rebasin_rs.torch as rbt

        modules = [_build(args, sd, f"checkpoint {k + 1}") for k, sd in enumerate(sds)]
        try:
            out = rbt.zipit(modules, data, progress=False)
        except ValueError as e:
            raise CliError(_line(e)) from None
        _say(args, f"zipit: {len(sds)} models, {sum(out.within.values())} merges inside one model")
        state = out.merged.state_dict()
        return {k: state[k].to("cpu") for k in sds[0]}
    method = {"mergemany": "mergemany", "cycle": "frank-wolfe"}[args.method]
    if _is_spec_file(args.model):
        spec, sizes = load_spec(args, sds[0], sds[1])
        for k, sd in enumerate(sds[2:], 2):
            try:
                spec.validate(sds[0], sd)
            except ValueError as e:
                raise CliError(f"--model {args.model}: checkpoint {k + 1}: {_line(e)}") from None
        learn = [n for n in spec.real_params() if not n.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]
        res = rb.merge_many(spec.restrict(learn), sds, method=method, seed=args.seed, progress=False)
        perms = [{g: p.get(g, np.arange(n)) for g, n in sizes.items()} for p in res.perms]
        _say(args, f"{args.method}: {len(sds)} models, {res.rounds} rounds, objective {res.objective:.6g}")
        return {k: v.to("cpu") for k, v in _average([rb.apply_permutation(spec, p, sd)
                                                      for p, sd in zip(perms, sds)]).items()}
    import rebasin_rs.torch as rbt

    modules = [_build(args, sd, f"checkpoint {k + 1}") for k, sd in enumerate(sds)]
    example = _example_input(args, modules[0])
    try:
        spec = rbt.infer_spec(modules[0], example, warn=not args.quiet)
    except (ValueError, TypeError) as e:
        raise CliError(f"{_line(e)} (check --input-shape / --input-dtype, or pass a spec file as --model)") from None
    out = rbt.merge_many(modules, spec=spec, method=method, seed=args.seed, progress=False)
    _say(args, f"{args.method}: {len(sds)} models, {out.rounds} rounds, objective {out.objective:.6g}"
               + ("; re-estimate BatchNorm statistics of the merged model before use"
                  if any(".running_var" in k for k in sds[0]) else ""))
    state = out.merged.state_dict()
    return {k: state[k].to("cpu") for k in sds[0]}

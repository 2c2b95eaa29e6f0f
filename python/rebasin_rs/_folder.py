"""Checkpoint folders as ``save_pretrained`` writes them: read in their stored dtype, written
whole or not at all.

A folder holds ``model.safetensors``, or shards ``model-0000k-of-0000n.safetensors`` with
``model.safetensors.index.json`` whose ``weight_map`` names the shard of every tensor; beside them
``config.json``, the tokenizer and other small files. An output folder repeats the layout of the
folder it follows (the same shard names, each tensor in the shard it was in, the same index with a
recomputed ``metadata.total_size``) and copies its other files unchanged; it is written into a
temporary folder beside the target and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

from rebasin_rs._errors import RebasinError
from rebasin_rs._io import new_file_mode, removed_on_failure

__all__ = ["INDEX", "SINGLE", "FolderLayout", "StoredState", "check_output_folder", "is_folder_output",
           "load_folder", "read_layout", "save_folder"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# Names that look like one file of another format: `-o out.bin` is a mistake to report (by the file
# checks), not a folder to create. Other dotted names ("Llama-3.2-1B") are folders.
_FILE_LIKE_SUFFIXES = (".bin", ".ckpt", ".pkl", ".pickle", ".json", ".h5", ".gguf", ".npz", ".npy", ".onnx",
                       ".msgpack", ".tar", ".zip", ".gz", ".txt", ".png")
# Weights in other formats are not copied into an output folder: they would be A's stale weights.
_OTHER_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@dataclass
class FolderLayout:
    """Where a folder keeps its tensors.

    Attributes:
        path: The folder.
        weight_map: Tensor name -> the file (inside ``path``) that holds it, in the folder's order.
        index: The index JSON (``model.safetensors.index.json``), or None for a single file.
        file_metadata: File name -> the safetensors metadata of that file (``{"format": "pt"}``).
    """

    path: str
    weight_map: dict[str, str]
    index: dict | None = None
    file_metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        """The weight files, in the order of their first tensor."""
        return list(dict.fromkeys(self.weight_map.values()))


def is_folder_output(path: Any) -> bool:
    """Whether an output path names a checkpoint folder rather than a file: it ends with a path
    separator, or has no checkpoint suffix (``.safetensors``, ``.pt``, ``.pth``) and no suffix of
    another one-file format (``.bin``, ``.json``, ...: a mistaken file name, refused by the file
    checks)."""
    from rebasin_rs._io import CHECKPOINT_SUFFIXES

    path = os.fspath(path)
    if path.endswith(("/", os.sep)):
        return True
    return not path.lower().endswith(CHECKPOINT_SUFFIXES + _FILE_LIKE_SUFFIXES)


def _safe_open(path: str, what: str):
    from safetensors import safe_open

    try:
        return safe_open(path, framework="pt")
    except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
        raise RebasinError(f"{what}: {path!r} could not be read as a safetensors file (truncated or corrupt?): "
                           f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def _read_index(folder: str, what: str) -> dict:
    path = os.path.join(folder, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise RebasinError(f"{what} {folder!r}: {INDEX} cannot be read ({' '.join(str(e).split())}); "
                           "re-save the model with save_pretrained") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise RebasinError(f"{what} {folder!r}: {INDEX} has no weight_map of tensor names to shard files; "
                           "re-save the model with save_pretrained")
    return index


def _check_shard(folder: str, shard: str, listed: list[str], what: str) -> dict[str, str]:
    """The shard's metadata, after checking that it holds exactly the tensors the index puts in
    it (a tensor the index does not list would be neither aligned nor written: refused)."""
    path = os.path.join(folder, shard)
    if os.path.basename(shard) != shard or not os.path.isfile(path):
        raise RebasinError(f"{what} {folder!r}: {INDEX} puts {listed[0]!r} in shard {shard!r}, which is missing; "
                           "copy the whole folder (every shard the index names)")
    with _safe_open(path, f"{what} {folder!r}") as f:
        keys = set(f.keys())
        metadata = dict(f.metadata() or {})
    lacking = [k for k in listed if k not in keys]
    if lacking:
        raise RebasinError(f"{what} {folder!r}: {INDEX} puts {lacking[0]!r} in shard {shard!r}, which lacks it; "
                           "the index and the shards are from different saves (re-save the model)")
    extra = sorted(keys - set(listed))
    if extra:
        raise RebasinError(f"{what} {folder!r}: shard {shard!r} holds {extra[0]!r}, which {INDEX} does not put "
                           "there; the index and the shards are from different saves (re-save the model)")
    return metadata


def read_layout(folder: Any, what: str = "checkpoint") -> FolderLayout:
    """The layout of a checkpoint folder, read from its index and the shards' headers (no tensor
    is read): every shard the index names exists and holds exactly the tensors the index puts in
    it.

    Raises:
        RebasinError: the folder is missing or holds no weights, the index is unreadable, names a
            missing shard or a tensor its shard lacks, or a shard holds a tensor the index does
            not put there.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise RebasinError(f"{what} {folder!r} is not a folder")
    if os.path.isfile(os.path.join(folder, INDEX)):
        index = _read_index(folder, what)
        weight_map = dict(index["weight_map"])
        by_shard: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        metadata = {shard: _check_shard(folder, shard, names, what) for shard, names in by_shard.items()}
        return FolderLayout(folder, weight_map, index, metadata)
    if os.path.isfile(os.path.join(folder, SINGLE)):
        with _safe_open(os.path.join(folder, SINGLE), f"{what} {folder!r}") as f:
            weight_map = {k: SINGLE for k in f.keys()}
            metadata = {SINGLE: dict(f.metadata() or {})}
        if not weight_map:
            raise RebasinError(f"{what} {folder!r}: {SINGLE} holds no tensors")
        return FolderLayout(folder, weight_map, None, metadata)
    others = sorted(f for f in os.listdir(folder) if f.endswith(_OTHER_WEIGHT_SUFFIXES))
    found = f" (it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else ""
    raise RebasinError(f"{what} {folder!r} is a folder without weights: it holds neither {SINGLE} nor {INDEX}"
                       f"{found}; save the model with save_pretrained (safetensors)")


def load_folder(folder: Any, what: str = "checkpoint") -> dict:
    """The state dict of a checkpoint folder, every tensor in its stored dtype (bfloat16 stays
    bfloat16), read shard by shard with safetensors; checked as :func:`read_layout` does.

    Example:
        >>> import tempfile, torch, rebasin_rs._folder as rf
        >>> from safetensors.torch import save_file
        >>> d = tempfile.mkdtemp()
        >>> save_file({"w": torch.ones(2, dtype=torch.bfloat16)}, d + "/model.safetensors")
        >>> rf.load_folder(d)["w"].dtype
        torch.bfloat16
    """
    layout = read_layout(folder, what)
    state = {}
    for shard in layout.files:
        with _safe_open(os.path.join(layout.path, shard), f"{what} {layout.path!r}") as f:
            for name in f.keys():
                state[name] = f.get_tensor(name)
    # The folder's own order (the index's), which error messages follow.
    return {name: state[name] for name in layout.weight_map}


class StoredState(Mapping):
    """A checkpoint folder's tensors, read when asked for, one at a time: a mapping of name ->
    tensor whose lookups read that tensor from its shard (memory-mapped by safetensors, the file
    closed again at once, so that no page of the folder stays mapped), in its stored dtype.
    ``meta`` holds every tensor's shape and dtype as meta tensors, from the shards' headers.

    The matching engine's torch products read a tensor when a product needs it and drop it after:
    two folders of a 7B model are aligned without either being loaded (see
    :func:`rebasin_rs.weight_matching` with ``products="torch"``).

    Example:
        >>> import tempfile, torch, rebasin_rs._folder as rf
        >>> from safetensors.torch import save_file
        >>> d = tempfile.mkdtemp()
        >>> save_file({"w": torch.ones(2, 3, dtype=torch.bfloat16)}, d + "/model.safetensors")
        >>> s = rf.StoredState(d)
        >>> s.meta["w"].shape, s["w"].dtype
        (torch.Size([2, 3]), torch.bfloat16)
    """

    def __init__(self, folder: Any, what: str = "checkpoint", device: Any = None) -> None:
        import torch

        self.layout = read_layout(folder, what)
        self.what = what
        # Where each tensor goes once read (the CPU by default).
        self.device = torch.device(device or "cpu")
        self.meta = {}
        dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "BOOL": torch.bool}
        for shard in self.layout.files:
            with _safe_open(os.path.join(self.layout.path, shard), f"{what} {self.layout.path!r}") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    dtype = dtypes.get(sl.get_dtype())
                    if dtype is None:
                        raise RebasinError(f"{what} {self.layout.path!r}: {name!r} has dtype {sl.get_dtype()}, which "
                                           "this reader does not take; re-save it as float32, float16 or bfloat16")
                    self.meta[name] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
        self.meta = {name: self.meta[name] for name in self.layout.weight_map}

    def __getitem__(self, name: str) -> Any:
        shard = self.layout.weight_map[name]
        with _safe_open(os.path.join(self.layout.path, shard), f"{self.what} {self.layout.path!r}") as f:
            t = f.get_tensor(name)
        return t if self.device.type == "cpu" else t.to(self.device)

    def __contains__(self, name: object) -> bool:
        return name in self.layout.weight_map

    def __iter__(self):
        return iter(self.layout.weight_map)

    def __len__(self) -> int:
        return len(self.layout.weight_map)


def check_output_folder(out: Any) -> str:
    """``out`` (without a trailing separator) if a new folder can be created there, checked before
    any work: it must not exist (a folder is written whole under a new name, never merged into or
    over another, so it cannot be an input either), and its parent must exist and be writable."""
    out = os.fspath(out)
    if not out:
        raise RebasinError("the output path is empty")
    out = out.rstrip("/" + os.sep) or out
    if os.path.isdir(out):
        raise RebasinError(f"output {out!r} is a directory that exists; name a new folder (the checkpoint folder is "
                           f"written whole, then renamed into place) or a file inside it, e.g. {out}/model.safetensors")
    if os.path.lexists(out):
        raise RebasinError(f"output {out!r} exists and is not a folder; name a new folder, or a .safetensors / .pt "
                           "file to write one file")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise RebasinError(f"output {out!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RebasinError(f"output {out!r}: directory {parent!r} is not writable")
    return out


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tensor_bytes(t: Any) -> int:
    return t.numel() * t.element_size()


def _write_shard(path: str, tensors: dict, metadata: dict[str, str]) -> None:
    """One safetensors file; tensors that share memory (tied weights) are written once each."""
    from safetensors.torch import save_file

    seen, out = set(), {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    # transformers refuses a safetensors file without format metadata.
    save_file(out, path, metadata={"format": "pt", **metadata})
    os.chmod(path, new_file_mode())  # safetensors creates it 0600
    _fsync(path)


_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _write_shard_streamed(path: str, names: list[str], state: Any, metadata: dict[str, str]) -> None:
    """One safetensors file written tensor by tensor from a lazy ``state`` (a mapping whose values
    are computed on lookup, with shapes and dtypes in ``state.meta``): the header first, from the
    meta tensors, then each tensor's bytes as it is produced, so that one tensor is in memory at a
    time. safetensors' ``save_file`` takes the whole file's tensors at once (a 5 GB shard); the
    format is a little-endian header length, the JSON header and the raw bytes, which is what is
    written here (and read back by safetensors in the tests)."""
    import struct

    import torch

    header, offset = {}, 0
    for name in names:
        m = state.meta[name]
        size = m.numel() * m.element_size()
        header[name] = {"dtype": _ST_DTYPES[str(m.dtype).removeprefix("torch.")], "shape": list(m.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", **metadata}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, new_file_mode())
    with os.fdopen(fd, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            t = state[name].detach().to("cpu").contiguous()
            m = state.meta[name]
            if tuple(t.shape) != tuple(m.shape) or t.dtype != m.dtype:
                raise RebasinError(f"the output's {name!r} is {t.dtype} {tuple(t.shape)}, not the {m.dtype} "
                                   f"{tuple(m.shape)} of the folder it follows")
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t
    _fsync(path)


def _small_files(folder: str) -> list[str]:
    """The files of ``folder`` an output copies: every regular file but the weights (its own, and
    weights in other formats, which would be stale beside the new ones)."""
    return sorted(f for f in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, f)) and f != INDEX and not f.endswith(_OTHER_WEIGHT_SUFFIXES))


def _write_contents(tmp: str, state: dict, layout: FolderLayout | None) -> None:
    """The weight files, the index and the copied files of an output folder, into ``tmp``."""
    weight_map = layout.weight_map if layout else {name: SINGLE for name in state}
    missing = [k for k in weight_map if k not in state]
    extra = [k for k in state if k not in weight_map]
    if missing or extra:
        which = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the folder does not"
        raise RebasinError(f"the output {which}; it must hold the tensors of the folder it follows")
    streamed = hasattr(state, "meta")
    for shard in dict.fromkeys(weight_map.values()):
        names = [k for k, s in weight_map.items() if s == shard]
        metadata = layout.file_metadata.get(shard, {}) if layout else {}
        if streamed:
            _write_shard_streamed(os.path.join(tmp, shard), names, state, metadata)
        else:
            _write_shard(os.path.join(tmp, shard), {k: state[k] for k in names}, metadata)
    if layout is not None and layout.index is not None:
        index = dict(layout.index)
        sizes = state.meta if streamed else state
        index["metadata"] = {**(index.get("metadata") or {}),
                             "total_size": sum(_tensor_bytes(sizes[k]) for k in weight_map)}
        with open(os.path.join(tmp, INDEX), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")  # as save_pretrained writes it
        _fsync(os.path.join(tmp, INDEX))
    for name in _small_files(layout.path) if layout else []:
        shutil.copyfile(os.path.join(layout.path, name), os.path.join(tmp, name))
        _fsync(os.path.join(tmp, name))


def save_folder(state: dict, out: Any, like: Any = None) -> str:
    """Writes a state dict as a checkpoint folder, whole or not at all.

    With ``like`` (a checkpoint folder), the output has its layout: the same weight files, each
    tensor in the file it was in, the same index with ``metadata.total_size`` recomputed, and its
    other files (``config.json``, the tokenizer, ...) copied unchanged. Without, one
    ``model.safetensors``. Tensors are written in their own dtype. A ``state`` with a ``meta``
    attribute (shapes and dtypes as meta tensors; values computed on lookup) is written one
    tensor at a time. The folder is built in a
    temporary folder beside ``out`` and renamed to ``out``; a failure, Ctrl-C, SIGTERM or SIGHUP
    removes the temporary folder.

    Returns:
        The folder written.

    Raises:
        RebasinError: ``out`` exists or cannot be created (:func:`check_output_folder`), or the
            tensors are not those of ``like``.
    """
    out = check_output_folder(out)
    layout = read_layout(like, "folder") if like is not None else None
    parent = os.path.dirname(os.path.abspath(out))
    tmp = []

    def remove() -> None:
        for path in tmp:
            shutil.rmtree(path, ignore_errors=True)

    with removed_on_failure(remove):
        tmp.append(tempfile.mkdtemp(dir=parent, prefix=".rebasin-", suffix=".tmp"))
        _write_contents(tmp[0], state, layout)
        os.chmod(tmp[0], new_file_mode(folder=True))
        _fsync(tmp[0])
        os.replace(tmp[0], out)  # fails, and the temporary folder goes, if `out` appeared meanwhile
    return out

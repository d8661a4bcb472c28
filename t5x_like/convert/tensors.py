"""Tensor-by-tensor plumbing shared by every converter: name maps, sources, sinks, our layout.

A format module (hf_t5, hf_llama, t5x_legacy) describes a checkpoint as a list of `Tensor`
entries, one per stored tensor: its name in that format, where it lives in our parameter tree
(with the layer index for per-layer tensors) and how the axes relate. The same list drives both
directions, so importing and exporting cannot disagree:

- `import_params` allocates our tree once (`np.empty`, in the scanned or unscanned layout of the
  ModelConfig) and fills it from a `Source` one tensor at a time, so a conversion holds about one
  copy of the weights (the source is memory-mapped or read lazily);
- `export_tensors` yields the other format's tensors one at a time from our tree, for a
  streaming writer such as `write_safetensors`.

Missing, extra and misshapen tensors are `ConversionError`s naming the tensor and both shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import jax.numpy as jnp
import numpy as np

from t5x_like import fileio


class ConversionError(ValueError):
    """A checkpoint does not fit the model it is converted to (or from); the message says how."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One stored tensor of a foreign format and its place in our parameter tree.

    `shape` is the foreign tensor's shape. `transpose`: the foreign tensor is the transpose of ours
    (torch Linear weights are (out, in), our kernels (in, out)); after it, the values are reshaped
    to our slot's shape (joined heads `H*E` <-> separate `H, E`).
    """

    name: str
    path: tuple[str, ...]  # keys in our tree, without the layer index
    shape: tuple[int, ...]
    layer: int | None = None  # index along our stacked 'layers' axis (or list position)
    transpose: bool = False


class Source(Protocol):
    """Read access to a foreign checkpoint, tensor by tensor."""

    def names(self) -> set[str]:
        """Every tensor name the checkpoint holds."""

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape, without reading the values."""

    def read(self, name: str) -> np.ndarray:
        """The values of one tensor."""


def require_keys(config: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
    """Raise ConversionError naming the first of `keys` that `config` lacks."""
    for key in keys:
        if key not in config:
            raise ConversionError(f"{what} lacks {key!r}; is it a complete config.json?")


def numpy_dtype(name: str) -> np.dtype:
    """'float32' / 'bfloat16' / 'float16' as a numpy dtype (JAX's numpy bfloat16 included)."""
    return np.dtype(jnp.dtype(name))


def _leaf_key(path: tuple, layer: int | None, scanned: bool) -> tuple:
    """Our tree's key path of the array `path`/`layer` writes into (unscanned: the layer index
    follows 'layers'; scanned: the stacked array itself)."""
    if layer is None or scanned:
        return tuple(path)
    at = path.index("layers") + 1
    return tuple(path[:at]) + (layer,) + tuple(path[at:])


def _slot_parent(tree: dict, path: tuple, layer: int | None, scanned: bool):
    """(container, key, index along the stacked axis or None) of `path`/`layer` in `tree`."""
    *parents, key = _leaf_key(path, layer, scanned)
    node = tree
    for parent in parents:
        node = node[parent]
    return node, key, (layer if (layer is not None and scanned) else None)


def our_shape(tree: dict, entry: Tensor, scanned: bool) -> tuple[int, ...]:
    """The shape of `entry`'s slot in our tree (one layer of a stacked array)."""
    node, key, index = _slot_parent(tree, entry.path, entry.layer, scanned)
    shape = tuple(node[key].shape)
    return shape[1:] if index is not None else shape


def _describe(entry: Tensor) -> str:
    where = "/".join(str(p) for p in entry.path)
    return f"{where}[layer {entry.layer}]" if entry.layer is not None else where


def _to_ours(value: np.ndarray, entry: Tensor, want: tuple[int, ...]) -> np.ndarray:
    if tuple(value.shape) != entry.shape:
        raise ConversionError(f"tensor {entry.name!r} has shape {tuple(value.shape)}, the model "
                              f"config expects {entry.shape} (ours: {_describe(entry)} {want})")
    if entry.transpose:
        value = value.T
    if int(np.prod(value.shape)) != int(np.prod(want)):
        raise ConversionError(f"tensor {entry.name!r} of shape {entry.shape} cannot fill "
                              f"{_describe(entry)} of shape {want}")
    return value.reshape(want)


def empty_tree(abstract: Any, dtype: np.dtype) -> Any:
    """Uninitialized numpy arrays shaped like the abstract parameter tree (the one copy)."""
    if isinstance(abstract, Mapping):
        return {k: empty_tree(v, dtype) for k, v in abstract.items()}
    return np.empty(abstract.shape, dtype)


def _leaves(tree: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, prefix + (k,))
    else:
        yield prefix, tree


def import_params(source: Source, entries: Iterable[Tensor], abstract: Any, *, scanned: bool,
                  dtype: np.dtype, ignored: Iterable[str] = (), what: str = "checkpoint") -> Any:
    """Our parameter tree filled from `source`; every slot and every source tensor must be used.

    `ignored` names tensors the format may hold that carry nothing of ours (e.g. tied copies).
    """
    tree = empty_tree(abstract, dtype)
    available, entries = source.names(), list(entries)
    missing = [e for e in entries if e.name not in available]
    if missing:
        raise ConversionError(
            f"{what} lacks {len(missing)} tensor(s) the model config needs, e.g. "
            f"{missing[0].name!r} of shape {missing[0].shape} (for {_describe(missing[0])}); "
            f"check num_layers / num_encoder_layers and mlp_activation against the checkpoint")
    writes: dict[tuple, int] = {}
    for entry in entries:
        node, key, index = _slot_parent(tree, entry.path, entry.layer, scanned)
        value = _to_ours(source.read(entry.name), entry, our_shape(tree, entry, scanned))
        if index is None:
            node[key][...] = value
        else:
            node[key][index] = value
        leaf = _leaf_key(entry.path, entry.layer, scanned)
        writes[leaf] = writes.get(leaf, 0) + 1
    extra = sorted(available - {e.name for e in entries} - set(ignored))
    if extra:
        shapes = ", ".join(f"{n!r} {source.shape(n)}" for n in extra[:4])
        raise ConversionError(
            f"{what} holds {len(extra)} tensor(s) the model config does not account for: "
            f"{shapes}{' ...' if len(extra) > 4 else ''} (more layers than the config, a gated MLP "
            f"under mlp_activation='relu', or another architecture?)")
    for path, array in _leaves(tree):  # nothing of ours may stay uninitialized
        stacked = scanned and "layers" in path
        if writes.get(path, 0) != (array.shape[0] if stacked else 1):
            raise ConversionError(f"{'/'.join(map(str, path))}: written {writes.get(path, 0)} "
                                  f"times by the name map (an internal gap: please report it)")
    return tree


def export_tensors(params: Any, entries: Iterable[Tensor], *, scanned: bool,
                   dtype: np.dtype | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) in the foreign layout, one at a time, from our parameter tree."""
    for entry in entries:
        node, key, index = _slot_parent(params, entry.path, entry.layer, scanned)
        value = np.asarray(node[key] if index is None else node[key][index])
        value = value.reshape(entry.shape[::-1] if entry.transpose else entry.shape)
        value = np.ascontiguousarray(value.T if entry.transpose else value)
        yield entry.name, value if dtype is None else value.astype(dtype)


# --------------------------------------------------------------------------------------------
# Hugging Face directories: safetensors (single or sharded) or PyTorch bins, read lazily.
# --------------------------------------------------------------------------------------------
class HFSource:
    """The tensors of a Hugging Face model directory, memory-mapped one file at a time."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        self._file_of: dict[str, pathlib.Path] = {}
        self._torch: dict[pathlib.Path, dict] = {}
        for file in self._weight_files():
            for name in self._keys(file):
                self._file_of[name] = file

    def _weight_files(self) -> list[pathlib.Path]:
        d = self.directory
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (d / index).is_file():
                shards = set(json.loads((d / index).read_text())["weight_map"].values())
                return [d / s for s in sorted(shards)]
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (d / single).is_file():
                return [d / single]
        raise ConversionError(f"{d}: no model.safetensors, pytorch_model.bin or their sharded "
                              f"index.json; is this a Hugging Face model directory?")

    def _keys(self, file: pathlib.Path) -> list[str]:
        if file.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(file), "numpy") as f:
                return list(f.keys())
        return list(self._torch_file(file))

    def _torch_file(self, file: pathlib.Path) -> dict:
        if file not in self._torch:
            import torch  # only PyTorch bins need it; mmap keeps them on disk until read
            self._torch[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        return self._torch[file]

    def names(self) -> set[str]:
        """Every tensor name of the model."""
        return set(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of one tensor."""
        file = self._file_of[name]
        if file.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(file), "numpy") as f:
                return tuple(f.get_slice(name).get_shape())
        return tuple(self._torch_file(file)[name].shape)

    def read(self, name: str) -> np.ndarray:
        """One tensor as numpy (bfloat16 stays bfloat16)."""
        file = self._file_of[name]
        if file.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(file), "numpy") as f:
                return f.get_tensor(name)
        tensor = self._torch_file(file)[name]
        if str(tensor.dtype) == "torch.bfloat16":
            return tensor.float().numpy().astype(numpy_dtype("bfloat16"))
        return tensor.numpy()


class DictSource:
    """A mapping of name -> array (or torch tensor) as a Source, e.g. a live state_dict."""

    def __init__(self, tensors: Mapping[str, Any]):
        self.tensors = tensors

    def names(self) -> set[str]:
        """Every key of the mapping."""
        return set(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape."""
        return tuple(self.tensors[name].shape)

    def read(self, name: str) -> np.ndarray:
        """The tensor as numpy (torch bfloat16/float16 come out as float32)."""
        value = self.tensors[name]
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
                value = value.float()
            value = value.numpy()
        return np.asarray(value)


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "int32": "I32"}


def write_safetensors(path: str | os.PathLike, header: list[tuple[str, np.dtype, tuple]],
                      tensors: Callable[[], Iterator[tuple[str, np.ndarray]]]) -> None:
    """Write a .safetensors file tensor by tensor (the library needs them all in memory at once).

    `header` lists (name, dtype, shape) in the order `tensors()` yields them; the file is the
    8-byte little-endian header size, the JSON header, then the raw little-endian buffers.
    """
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in header:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        meta[name] = {"dtype": _SAFETENSORS_DTYPES[np.dtype(dtype).name], "shape": list(shape),
                      "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(meta, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    expected = {name: (np.dtype(dtype), tuple(shape)) for name, dtype, shape in header}
    with fileio.atomic_writer(path, "wb") as f:  # re-exporting over an export keeps it whole
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, value in tensors():
            if (value.dtype, tuple(value.shape)) != expected[name]:
                raise ConversionError(f"{name}: produced {value.dtype}{value.shape}, the header "
                                      f"announced {expected[name]}")
            f.write(np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes())

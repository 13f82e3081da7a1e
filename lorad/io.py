"""Read, validate and write ``.lorad.safetensors`` files (spec: docs/lorad-format.md).

A file holds, per adapted layer ``<key>``, either the factors ``<key>.lorad_A``
``(out, r)`` and ``<key>.lorad_B`` ``(r, pairs)`` or dense angles
``<key>.lorad_theta`` ``(out, pairs)``; keys are spelled by :mod:`.keymap`.
In memory a file is a :class:`LoRaDFile` whose ``layers`` map each key to
``{"A": .., "B": ..}`` or ``{"theta": ..}`` (float32 after loading).

Reading validates everything before returning anything; every error is a
:class:`LoRaDFileError` naming the file, the key and what was expected.  Writing
is atomic (temp file in the target folder, then ``os.replace``) and never
replaces an existing file unless ``force=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from . import keymap
from .archs import get_arch
from .file_checks import SUFFIXES, Layers, LoRaDFileError, check_all, check_finite, layout_of, rank_keys
from .layer_spec import LayerSpec, LayerSpecError
from .metadata import (
    K_ARCH,
    K_HASH,
    K_NUM_LAYERS,
    K_NUM_PARAMS,
    K_RANK,
    K_RANK_PATTERN,
    K_VERSION,
    OneStep,
    build_metadata,
    parse_one_step,
)

__all__ = [
    "SUFFIXES",
    "STORAGE_DTYPES",
    "LoRaDFileError",
    "LoRaDFile",
    "save_lorad",
    "load_lorad",
    "Header",
    "read_header",
    "file_from_tensors",
    "tensors_sha256",
    "validate_layers",
    "build_metadata",
    "layers_from_adapter_state",
    "adapter_state_from_layers",
    "data_sha256",
]

STORAGE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in STORAGE_DTYPES.items()}
_CHUNK = 16 * 1024 * 1024

@dataclass
class LoRaDFile:
    path: Path | None
    layers: Layers
    metadata: dict[str, str]
    storage_dtype: str | None = None  # "F16" / "BF16" / "F32" as stored; None if mixed or in memory

    @property
    def arch(self) -> str:
        return self.metadata.get(K_ARCH, "")

    @property
    def rank(self) -> int | None:
        """The rank shared by every layer; None when ranks are mixed or any layer is dense."""
        ranks = {t["A"].shape[1] if "A" in t else None for t in self.layers.values()}
        return ranks.pop() if len(ranks) == 1 and None not in ranks else None

    @property
    def one_step(self) -> OneStep | None:
        return parse_one_step(self.metadata)

    @property
    def layout(self) -> dict | None:
        """The denoiser layout the keys were spelled for, when it differs from the architecture's."""
        return layout_of(None, self.metadata)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for group in self.layers.values() for t in group.values())

    @property
    def format_version(self) -> str:
        return self.metadata.get(K_VERSION, "")

    def components(self) -> dict[str, int]:
        """Layer count per component (``unet``, ``text_encoder``, ...)."""
        out: dict[str, int] = {}
        for key in self.layers:
            comp = keymap.component_of(self.arch, key)
            out[comp] = out.get(comp, 0) + 1
        return out


# -- reading ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """A safetensors header as safetensors' own reader sees it (no tensor data read).

    ``tensors`` maps each name to ``(dtype, shape)`` in the order the data section stores
    them, so the bytes of the tensors taken in this order hash to ModelSpec's ``hash_sha256``.
    """

    metadata: dict[str, str]
    tensors: dict[str, tuple[str, list[int]]]


def _offset_order(path: Path, opened, names: list[str]) -> list[str]:
    """``names`` in data-section order: safetensors' ``offset_keys()``, else the validated header's offsets.

    safetensors older than 0.6 (ComfyUI asks for >= 0.4.2) has no ``offset_keys``; then the
    ``data_offsets`` are read from the header JSON that safe_open has just validated.
    """
    if hasattr(opened, "offset_keys"):
        return list(opened.offset_keys())
    with open(path, "rb") as raw:
        (n,) = struct.unpack("<Q", raw.read(8))
        table = json.loads(raw.read(n))
    return sorted(names, key=lambda name: table[name]["data_offsets"][0])


def read_header(path: str | os.PathLike) -> Header:
    """Metadata and tensor table of ``path`` from safetensors' own reader: the one header reader.

    safetensors validates the header (length, JSON, string metadata, sizes, offsets); its error
    names neither the file nor what was expected, so it is wrapped.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            md = f.metadata() or {}
            entries = {}
            for name in _offset_order(path, f, list(f.keys())):
                sl = f.get_slice(name)
                entries[name] = (sl.get_dtype(), list(sl.get_shape()))
    except Exception as e:  # safetensors.SafetensorError and OSError alike
        raise LoRaDFileError(path, None, f"not a valid safetensors file: {e}", "a .safetensors file") from None
    return Header(dict(md), entries)


def _data_start(path: Path) -> int:
    """Where the tensor bytes begin: 8 + the header length, the file's first 8 bytes (little-endian).

    safetensors' API exposes no offset of its data section, and ModelSpec's ``hash_sha256`` covers
    exactly the bytes after the header, so this one number is read by hand (after safe_open
    validated the header).
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def data_sha256(path: str | os.PathLike) -> str:
    """ModelSpec ``hash_sha256``: sha256 of everything after the header (the tensor bytes), ``0x``-prefixed."""
    path = Path(path)
    read_header(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(_data_start(path))
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "0x" + h.hexdigest()


def _group(path, names) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        for kind, suffix in SUFFIXES.items():
            if name.endswith(suffix):
                groups.setdefault(name[: -len(suffix)], {})[kind] = name
                break
        else:
            raise LoRaDFileError(path, name, "unexpected tensor", "<key>.lorad_A, <key>.lorad_B or <key>.lorad_theta")
    return groups


def _header_layers(path, header: Header) -> tuple[dict[str, dict[str, str]], dict[str, str], set[str]]:
    """Check the tensor table and metadata of a header: (groups key -> kind -> tensor name, metadata, dtypes)."""
    md, entries = header.metadata, header.tensors
    dtypes = set()
    for name, (dtype, _) in entries.items():
        if dtype not in STORAGE_DTYPES:
            raise LoRaDFileError(path, name, f"dtype {dtype!r} not allowed", "F16, BF16 or F32")
        dtypes.add(dtype)
    groups = _group(path, list(entries))
    # Metadata first: a file that is not LoRaD at all should say so before any shape talk.
    shapes = {key: {k: torch.empty(entries[n][1], device="meta") for k, n in g.items()}
              for key, g in groups.items()}
    check_all(path, shapes, md)
    return groups, md, dtypes


def load_lorad(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    verify_hash: bool = True,
    dtype: torch.dtype | None = torch.float32,
    header_only: bool = False,
) -> LoRaDFile:
    """Read and fully validate a file; tensors come back as ``dtype`` (None: as stored) on ``device``.

    ``header_only`` reads the safetensors header alone (metadata, names, shapes; tensors on the
    ``meta`` device, no hash or finiteness check): what an info panel needs, at no read cost.
    """
    path = Path(path)
    if not path.is_file():
        raise LoRaDFileError(path, None, "no such file", "an existing .lorad.safetensors file")
    header = read_header(path)
    groups, md, dtypes = _header_layers(path, header)
    storage = dtypes.pop() if len(dtypes) == 1 else None
    if header_only:
        entries = header.tensors
        layers = {key: {k: torch.empty(entries[n][1], dtype=STORAGE_DTYPES[entries[n][0]], device="meta")
                        for k, n in g.items()} for key, g in groups.items()}
        return LoRaDFile(path, layers, md, storage)
    if verify_hash and K_HASH in md:
        actual = data_sha256(path)
        if actual.lower() != md[K_HASH].lower():
            raise LoRaDFileError(path, K_HASH, f"tensor data hash {actual} does not match the header",
                                 f"{md[K_HASH]} (file corrupted or tensors edited)")
    layers: Layers = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key, g in groups.items():
                layers[key] = {k: f.get_tensor(n).to(device=device, dtype=dtype) for k, n in g.items()}
    except LoRaDFileError:
        raise
    except Exception as e:  # safetensors raises its own error types; name the file
        raise LoRaDFileError(path, None, f"cannot read tensors: {e}", "a valid .safetensors file") from None
    check_finite(path, layers)
    return LoRaDFile(path, layers, md, storage)


def tensors_sha256(tensors: Mapping[str, Tensor], header: Header) -> str:
    """:func:`data_sha256` of the file these tensors were read from, computed from the tensors (file order)."""
    h = hashlib.sha256()
    for n in header.tensors:  # data-section order (see Header)
        h.update(tensors[n].detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return "0x" + h.hexdigest()


def file_from_tensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], header: Header) -> LoRaDFile:
    """Validate tensors already read from ``path`` (e.g. by ComfyUI's stock LoRA loader) like :func:`load_lorad`.

    ``header`` is ``read_header(path)``: the metadata and the tensor table the tensors must
    match (names, dtypes, shapes).  The ModelSpec hash is checked against the tensors' own
    bytes in file order, so the check covers what will be applied, without reading the file again.
    """
    groups, md, dtypes = _header_layers(path, header)
    names = list(header.tensors)
    if set(names) != set(tensors):
        extra = sorted(set(tensors) - set(names)) or sorted(set(names) - set(tensors))
        raise LoRaDFileError(path, extra[0], "the loaded tensors are not the file's tensors", "the same names")
    for n, (dtype, shape) in header.tensors.items():
        t = tensors[n]
        if _DTYPE_NAMES.get(t.dtype) != dtype or list(t.shape) != shape:
            raise LoRaDFileError(path, n, f"loaded as {t.dtype} {tuple(t.shape)}", f"{dtype} {tuple(shape)} as in the file")
    if K_HASH in md:
        actual = tensors_sha256(tensors, header)
        if actual.lower() != md[K_HASH].lower():
            raise LoRaDFileError(path, K_HASH, f"tensor data hash {actual} does not match the header",
                                 f"{md[K_HASH]} (file corrupted or tensors edited)")
    layers = {key: {k: tensors[n] for k, n in g.items()} for key, g in groups.items()}
    check_finite(path, layers)
    storage = dtypes.pop() if len(dtypes) == 1 else None
    return LoRaDFile(Path(path), layers, md, storage)


def _first(items: list[str], n: int = 20) -> str:
    """The first ``n`` lines of a list for an error message (a whole wrong file would be thousands)."""
    more = f"\n  ... and {len(items) - n} more" if len(items) > n else ""
    return "\n  ".join(items[:n]) + more


def validate_layers(
    file: LoRaDFile,
    weight_shapes: Mapping[str, tuple[int, ...]],
    *,
    allow_partial: bool = False,
) -> list[str]:
    """Check the file's layers against the target weights; return the matched keys (file order).

    ``weight_shapes`` maps file keys to the shape of the weight each addresses
    (see :func:`weight_shapes_of`).  A shape that does not fit is always an error;
    keys with no target are an error unless ``allow_partial``.
    """
    problems: list[str] = []
    unmatched: list[str] = []
    matched: list[str] = []
    for key, t in file.layers.items():
        shape = weight_shapes.get(key)
        if shape is None:
            unmatched.append(key)
            continue
        try:
            LayerSpec.from_parts(t, key).check_fit(shape)
        except LayerSpecError as e:
            problems.append(str(e))
            continue
        matched.append(key)
    if problems:
        raise LoRaDFileError(file.path, None, f"{len(problems)} layer(s) do not fit the model:\n  "
                             + _first(problems))
    if unmatched and not allow_partial:
        shown = _first(unmatched)
        raise LoRaDFileError(file.path, None, f"{len(unmatched)} key(s) match no weight of the model "
                             f"(nothing applied):\n  {shown}", "every key to resolve, or allow_partial=True")
    return matched


# -- writing ---------------------------------------------------------------------------
def _write_bytes(f, chunks) -> None:
    """Write the file body (separate so tests can simulate a failure mid-write)."""
    for chunk in chunks:
        f.write(chunk)


def _serialize(tensors: dict[str, Tensor], md: dict[str, str]) -> list:
    """safetensors bytes with ``modelspec.hash_sha256`` of the data section filled in.

    The data section does not depend on the metadata (offsets count from its start), so the
    hash of a first serialization's data is the hash of the final file's data.  The second
    serialization costs ~0.25 s per 50 MB of tensors (measured on one CPU core), once per file written.
    """
    blob = st_save(tensors, metadata=md)
    (n,) = struct.unpack("<Q", blob[:8])  # the header length, as in _data_start
    digest = hashlib.sha256(memoryview(blob)[8 + n:]).hexdigest()
    return [st_save(tensors, metadata={**md, K_HASH: "0x" + digest})]


def save_lorad(
    path: str | os.PathLike,
    layers: Mapping[str, Mapping[str, Tensor]],
    metadata: Mapping[str, str],
    *,
    force: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Validate and write atomically; refuses to replace ``path`` unless ``force``.

    Counts, the rank pattern and the ModelSpec hash are filled in from the tensors.
    """
    path = Path(path)
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"{path}: storage dtype {dtype} not allowed (float16, bfloat16 or float32)")
    if path.exists() and not force:
        raise FileExistsError(f"{path}: file exists; pass force=True (--force) to replace it")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise LoRaDFileError(path, bad[0], "metadata values must be strings", "str keys and str values")
    cast: Layers = {}
    for key, t in layers.items():
        cast[key] = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in t.items()}
    md = dict(metadata)
    for k in (K_RANK_PATTERN, K_HASH):
        md.pop(k, None)
    ranks = rank_keys(cast)
    if metadata.get(K_RANK) not in (None, ranks[K_RANK], "mixed"):
        raise LoRaDFileError(path, K_RANK, f"metadata says {metadata[K_RANK]!r} but the layers have {ranks[K_RANK]!r}",
                             "build_metadata(rank=...) to match the layers")
    md.update(ranks)
    if "ss_network_dim" in md:  # indexers read it as an int: the largest factor rank (0 if all dense)
        md["ss_network_dim"] = str(max([v.shape[1] for t in cast.values() for k, v in t.items() if k == "A"],
                                       default=0))
    md[K_NUM_LAYERS] = str(len(cast))
    md[K_NUM_PARAMS] = str(sum(v.numel() for t in cast.values() for v in t.values()))
    check_all(path, cast, md)
    check_finite(path, cast)  # after the cast: fp16 can overflow to inf
    tensors = {key + SUFFIXES[k]: v for key, t in cast.items() for k, v in t.items()}
    chunks = _serialize(tensors, md)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            _write_bytes(f, chunks)
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and not force:  # appeared while we were writing
            raise FileExistsError(f"{path}: file exists; pass force=True (--force) to replace it")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# -- adapter state <-> file layers ------------------------------------------------------
def layers_from_adapter_state(
    arch: str, state: Mapping[str, Mapping[str, Tensor]], component: str | None = None, layout: Mapping | None = None
) -> Layers:
    """``inject.adapter_state`` (diffusers module names) -> file layers (file keys)."""
    out: Layers = {}
    for name, t in state.items():
        key = keymap.to_file_key(arch, name, component, layout)
        if key in out:
            raise keymap.KeyMapError(f"{name!r} and another module both map to {key!r}")
        out[key] = dict(t)
    return out


def adapter_state_from_layers(
    arch: str, layers: Mapping[str, Mapping[str, Tensor]], component: str | None = None, layout: Mapping | None = None
) -> Layers:
    """File layers -> ``inject.load_adapter_state`` input for one component (others are skipped)."""
    spec = get_arch(arch)
    component = component or spec.denoiser
    out: Layers = {}
    for key, t in layers.items():
        comp, name = keymap.to_module_name(spec, key, layout)
        if comp == component:
            out[name] = dict(t)
    return out

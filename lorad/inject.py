"""Inject LoRaD adapters into any torch module tree and manage them.

One frozen base, several named adapters: the WaDi trainer holds the teacher
(no adapter active), the fake score (``"fake"``) and the student (``"student"``)
as views of a single copy of the base weights::

    inject(unet, "student", "paper-student", rank=256)
    inject(unet, "fake", "paper-fake", rank=32)
    with active_adapters(unet, "student"):
        eps = unet(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import functional
from .layer import LoRaDLayer
from .presets import Targets, resolve_targets

__all__ = [
    "inject",
    "lorad_layers",
    "adapter_names",
    "set_active",
    "get_active",
    "active_adapters",
    "set_strength",
    "merge",
    "unmerge",
    "remove",
    "adapter_parameters",
    "named_adapter_parameters",
    "count_parameters",
    "adapter_state",
    "load_adapter_state",
    "set_naive",
]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def lorad_layers(model: nn.Module) -> Iterator[tuple[str, LoRaDLayer]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRaDLayer):
            yield name, m


def inject(
    model: nn.Module,
    adapter: str,
    targets: str | Targets | Sequence[str] = "paper-student",
    rank: int = 256,
    dense: bool | str = False,
    seed: int | None = 0,
    freeze_base: bool = True,
) -> list[str]:
    """Add adapter ``adapter`` to every matching layer; return the adapted layer names.

    ``dense=True`` stores full angle tensors; ``dense="auto"`` does so only where the
    factors would be larger than theta.  ``seed`` makes the Xavier init of ``B``
    reproducible (layers are initialised in module order).  Nothing is changed if
    any layer fails its checks (odd width, name clash).
    """
    t = resolve_targets(model, targets)
    chosen: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        # An already wrapped layer is matched by the type it wraps.
        typ = m.base_type if isinstance(m, LoRaDLayer) else type(m)
        if name and t.matches(name, typ):
            chosen.append((name, m))
    if not chosen:
        raise ValueError(f"adapter {adapter!r}: no layer of {type(model).__name__} matches {t}")
    # Validate everything before touching the model (nothing half-applied).
    for name, m in chosen:
        functional.check_pairable(m.weight.shape, name)
        if isinstance(m, LoRaDLayer) and adapter in m.lorad:
            raise ValueError(f"{name}: adapter {adapter!r} already exists")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    if freeze_base:
        # Freeze the base only: adapters injected earlier (e.g. the student) stay trainable.
        adapter_ids = {id(p) for _, layer in lorad_layers(model) for p in layer.lorad.parameters()}
        for p in model.parameters():
            if id(p) not in adapter_ids:
                p.requires_grad_(False)
    done = []
    for name, m in chosen:
        layer = m if isinstance(m, LoRaDLayer) else LoRaDLayer(m, name)
        if layer is not m:
            _set_submodule(model, name, layer)
        out_f = layer.weight.shape[0]
        use_dense = dense is True or (dense == "auto" and functional.prefer_dense(out_f, layer.pairs, rank))
        ad = layer.add_adapter(adapter, None if use_dense else rank, dense=use_dense, generator=gen)
        if layer.weight.device.type != "meta" and ad.A is not None:
            ad.to(layer.weight.device)
        done.append(name)
    return done


def adapter_names(model: nn.Module) -> list[str]:
    seen: dict[str, None] = {}
    for _, layer in lorad_layers(model):
        for n in layer.lorad:
            seen[n] = None
    return list(seen)


def set_active(model: nn.Module, names: str | Sequence[str] | None) -> None:
    """Choose the adapters used in the forward: a name, several names, or None (the base)."""
    names = () if names is None else ((names,) if isinstance(names, str) else tuple(names))
    known = set(adapter_names(model))
    missing = [n for n in names if n not in known]
    if missing:
        raise KeyError(f"no adapter named {missing} in the model (have {sorted(known)})")
    for _, layer in lorad_layers(model):
        layer.set_active([n for n in names if n in layer.lorad])


def get_active(model: nn.Module) -> tuple[str, ...]:
    for _, layer in lorad_layers(model):
        return layer.active
    return ()


@contextlib.contextmanager
def active_adapters(model: nn.Module, names: str | Sequence[str] | None) -> Iterator[None]:
    before = {n: layer.active for n, layer in lorad_layers(model)}
    set_active(model, names)
    try:
        yield
    finally:
        for n, layer in lorad_layers(model):
            layer.active = before.get(n, ())


def set_strength(model: nn.Module, adapter: str, strength: float) -> None:
    for _, layer in lorad_layers(model):
        if adapter in layer.lorad:
            if any(n == adapter for n, _ in layer.merged):
                raise RuntimeError(f"{layer.layer_name}: unmerge {adapter!r} before changing its strength")
            layer.lorad[adapter].strength = float(strength)


def merge(model: nn.Module, names: str | Sequence[str] | None = None, keep_original: bool = True) -> None:
    """Rotate base weights by the given (default: active) adapters; all-or-nothing."""
    names = [names] if isinstance(names, str) else names
    layers = list(lorad_layers(model))
    for name, layer in layers:  # check finiteness everywhere first
        use = [n for n in (layer.active if names is None else names) if n in layer.lorad]
        if use and not torch.isfinite(layer.rotated_weight(use)).all():
            raise ValueError(f"{name}: non-finite merged weight; nothing merged")
    for _, layer in layers:
        use = [n for n in (layer.active if names is None else names) if n in layer.lorad]
        layer.merge(use, keep_original=keep_original)


def unmerge(model: nn.Module) -> None:
    for _, layer in lorad_layers(model):
        layer.unmerge()


def remove(model: nn.Module, adapter: str | None = None, bake: bool = False) -> None:
    """Drop one adapter (or all); layers left without adapters become plain modules again.

    A merged adapter is refused unless ``bake=True``, which keeps its rotation in
    the base weights (merge, then bake into a plain model for export).
    """
    for name, layer in list(lorad_layers(model)):
        for n in [adapter] if adapter is not None else list(layer.lorad):
            if n in layer.lorad and any(m == n for m, _ in layer.merged) and not bake:
                raise RuntimeError(f"{name}: adapter {n!r} is merged; unmerge first or pass bake=True")
    for name, layer in list(lorad_layers(model)):
        if bake and adapter is None and layer.merged:
            layer.merged, layer._unmerged_weight = [], None
        for n in [adapter] if adapter is not None else list(layer.lorad):
            if n in layer.lorad:
                layer.remove_adapter(n, bake=bake)
        if len(layer.lorad) == 0:
            _set_submodule(model, name, layer.to_base())


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    return list(named_adapter_parameters(model, adapter).values())


def named_adapter_parameters(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """``{"<module>.<A|B|theta>": parameter}`` of one adapter, in model order (optimizer and
    checkpoint keys)."""
    return {f"{name}.{pname}": p for name, layer in lorad_layers(model) if adapter in layer.lorad
            for pname, p in layer.lorad[adapter].named_parameters()}


def count_parameters(model: nn.Module, adapter: str) -> int:
    return sum(p.numel() for p in adapter_parameters(model, adapter))


def adapter_state(model: nn.Module, adapter: str) -> dict[str, dict[str, Tensor]]:
    """``{module name: {"A": .., "B": ..} | {"theta": ..}}`` for one adapter (detached)."""
    out: dict[str, dict[str, Tensor]] = {}
    for name, layer in lorad_layers(model):
        if adapter in layer.lorad:
            ad = layer.lorad[adapter]
            out[name] = {"theta": ad.theta.detach()} if ad.dense else {"A": ad.A.detach(), "B": ad.B.detach()}
    return out


def load_adapter_state(
    model: nn.Module,
    adapter: str,
    state: Mapping[str, Mapping[str, Tensor]],
    strict: bool = True,
) -> list[str]:
    """Create adapter ``adapter`` from :func:`adapter_state`-style tensors; return loaded names.

    Every layer name must exist and every shape must fit before anything is added;
    with ``strict`` unknown names are an error, otherwise they are skipped.
    """
    plan = []
    problems = []
    for name, t in state.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: no such module")
            continue
        weight = getattr(m, "weight", None)
        if weight is None or weight.dim() < 2:
            problems.append(f"{name}: not a Linear/Conv2d layer")
            continue
        pairs = functional.pair_width(weight.shape) // 2
        out_f = weight.shape[0]
        if "theta" in t:
            if tuple(t["theta"].shape) != (out_f, pairs):
                problems.append(f"{name}: theta shape {tuple(t['theta'].shape)}, expected {(out_f, pairs)}")
                continue
        else:
            a, b = t["A"], t["B"]
            if a.shape[0] != out_f or b.shape[1] != pairs or a.shape[1] != b.shape[0]:
                problems.append(
                    f"{name}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit weight {tuple(weight.shape)}"
                    f" (expected A ({out_f}, r), B (r, {pairs}))"
                )
                continue
        if isinstance(m, LoRaDLayer) and adapter in m.lorad:
            problems.append(f"{name}: adapter {adapter!r} already exists")
            continue
        plan.append((name, m, t))
    if problems and strict:
        raise ValueError(f"adapter {adapter!r}: cannot load:\n  " + "\n  ".join(problems))
    for name, m, t in plan:
        layer = m if isinstance(m, LoRaDLayer) else LoRaDLayer(m, name)
        if layer is not m:
            layer.weight.requires_grad_(False)
            if layer.bias is not None:
                layer.bias.requires_grad_(False)
            _set_submodule(model, name, layer)
        rank = None if "theta" in t else t["A"].shape[1]
        ad = layer.add_adapter(adapter, rank, dense="theta" in t)
        with torch.no_grad():
            if ad.dense:
                ad.theta.copy_(t["theta"].float())
            else:
                ad.A.copy_(t["A"].float())
                ad.B.copy_(t["B"].float())
    return [n for n, _, _ in plan]


def set_naive(model: nn.Module, naive: bool = True) -> None:
    """Switch every LoRaD layer to the plain-autograd reference path (benchmarks, tests)."""
    for _, layer in lorad_layers(model):
        layer.naive = naive

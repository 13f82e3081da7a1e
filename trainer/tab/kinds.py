"""Which trainings the tab can run, each described by its typed config module.

A config module (e.g. ``trainer/config.py``) provides the dataclass plus
``from_dict(dict) -> cfg`` (type checks, version migrations), ``to_dict(cfg)``,
optionally ``validate(cfg)`` and ``CONFIG_VERSION``.  The tab never re-implements
any of that; it renders the dataclass and hands values back to these functions,
so the tab, a YAML file and ``wadi <command> --key value`` accept the same input.
Presets are versioned YAML read and written through the same functions.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BUILTIN_PRESETS = Path(__file__).with_name("presets")
PACK_ROOT = Path(__file__).resolve().parents[2]
# Shipped recipes that live elsewhere in the pack, offered as presets once the file exists
# (kind -> {preset name: file}).  Add a line here to list another recipe.
LINKED_PRESETS: dict[str, dict[str, Path]] = {
    "distill": {"tinyworld-quality": PACK_ROOT / "configs" / "tinyworld-quality.yaml"},
}
FIRST_RUN_PRESET = {"distill": "tinyworld"}  # preselected while the user has no preset of their own
_PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class TrainKind:
    kind: str  # job kind and preset sub-folder: "distill"
    title: str  # the tab's label
    subcommand: str  # ``wadi <subcommand> --config ...``
    config_cls: type
    from_dict: Callable[[dict], Any]
    to_dict: Callable[[Any], dict]
    validate: Callable[[Any], None] | None = None
    version: int | None = None
    out_dir_field: str = "output.dir"  # where the run writes events.jsonl
    path_fields: tuple[str, ...] = ()  # user paths to confine to the roots
    write_fields: tuple[str, ...] = ("output.dir", "data.cache_dir")  # of those, the ones the job writes
    resume_field: str = "resume"

    def get(self, cfg: Any, path: str) -> Any:
        for part in path.split("."):
            cfg = getattr(cfg, part)
        return cfg

    def set(self, cfg: Any, path: str, value: Any) -> None:
        *parents, leaf = path.split(".")
        for part in parents:
            cfg = getattr(cfg, part)
        setattr(cfg, leaf, value)

    def load_yaml(self, path: str | os.PathLike[str]) -> Any:
        """A preset file -> config, with the file named in every error."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{p}: cannot read YAML: {e}") from None
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of config sections, got {type(data).__name__}")
        try:
            return self.from_dict(data or {})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{p}: {e}") from None

    def dump_yaml(self, cfg: Any) -> str:
        return yaml.safe_dump(self.to_dict(cfg), sort_keys=False)

    def save_yaml(self, cfg: Any, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Atomic write (temp + replace); an existing file is kept unless ``overwrite``."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; tick 'overwrite' to replace it")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(self.dump_yaml(cfg), encoding="utf-8")
        os.replace(tmp, p)
        return p


def check_preset_name(name: str) -> str:
    name = (name or "").strip().removesuffix(".yaml")
    if not _PRESET_NAME.match(name):
        raise ValueError(f"preset name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def preset_files(kind: str, user_dir: Path) -> dict[str, Path]:
    """``{name: file}``: the shipped presets (and linked recipes), then the user's (which win on a name clash)."""
    out: dict[str, Path] = {name: p for name, p in LINKED_PRESETS.get(kind, {}).items() if p.is_file()}
    for folder in (BUILTIN_PRESETS / kind, Path(user_dir) / kind):
        if folder.is_dir():
            out.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return out


def _module_kind(kind: str, title: str, module: str, cls_name: str, **extra: Any) -> TrainKind:
    mod = importlib.import_module(module, __package__)
    cls = getattr(mod, cls_name)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{module}.{cls_name} is not a dataclass")
    return TrainKind(kind=kind, title=title, subcommand=extra.pop("subcommand", kind), config_cls=cls,
                     from_dict=mod.from_dict, to_dict=mod.to_dict, validate=getattr(mod, "validate", None),
                     version=getattr(mod, "CONFIG_VERSION", None), **extra)


# kind -> (tab title, config module relative to this package, class name, extras).
KIND_SOURCES: dict[str, tuple[str, str, str, dict]] = {
    "distill": ("Distill (WaDi)", "..config", "DistillConfig",
                {"path_fields": ("model.base", "data.prompts", "data.cache_dir", "output.dir")}),
    "personalize": ("Personalize", "..personalize", "PersonalizeConfig",
                    {"path_fields": ("model.base", "model.student", "data.images", "data.cache_dir",
                                     "prior.class_dir", "output.dir", "output.preview_student")}),
    "relation": ("Relation", "..relation", "RelationConfig",
                 {"path_fields": ("model.base", "data.images", "data.cache_dir", "output.dir",
                                  "output.preview_student")}),
}


def load_kinds(sources: dict[str, tuple[str, str, str, dict]] | None = None) -> dict[str, TrainKind | str]:
    """Each kind's :class:`TrainKind`, or the reason it is unavailable (shown in its tab)."""
    out: dict[str, TrainKind | str] = {}
    for kind, (title, module, cls_name, extra) in (sources or KIND_SOURCES).items():
        try:
            out[kind] = _module_kind(kind, title, module, cls_name, **dict(extra))
        except (ImportError, AttributeError, TypeError) as e:
            out[kind] = f"{title}: its config module ({module.lstrip('.')}.{cls_name}) is not in this build ({e})."
    return out

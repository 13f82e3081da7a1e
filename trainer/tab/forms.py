"""Forms generated from a typed config dataclass: field types -> widgets, help -> info, sections -> accordions.

The dataclass is the single source of truth.  This module only maps it to a flat
list of :class:`FieldSpec` (in declaration order) and converts values both ways;
type checking and error messages stay with the config module's ``from_dict``, so
the form, the YAML file and the CLI accept exactly the same things.  One load of
a preset returns a value for *every* widget in one event, so a loaded preset is
fully applied the first time (kohya_ss needed two loads).

Help text comes from ``field(metadata={"help": ...})`` or, failing that, from the
comment on (or just above) the field's line in the class source.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

SKIP_FIELDS = ("version",)  # set by the config module, never edited by hand


@dataclass(frozen=True)
class FieldSpec:
    path: str  # dotted: "train.max_steps"
    tp: Any  # the annotation with Optional stripped
    optional: bool
    default: Any
    help: str
    widget: str  # checkbox | int | float | text | dropdown | lines | csv
    choices: tuple = ()

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def elem_id(self) -> str:
        return "cfg-" + self.path.replace(".", "-").replace("_", "-")


# -- help text ------------------------------------------------------------------------------------
def _source_comments(cls: type) -> dict[str, str]:
    """``{field name: comment}`` from the class body's trailing or preceding ``#`` comments."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    src = inspect.cleandoc("\n" + src) if src.startswith((" ", "\t")) else src
    comments: dict[int, str] = {}
    only_comment: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                line_no = tok.start[0]
                comments[line_no] = tok.string.lstrip("#").strip()
                if not tok.line[: tok.start[1]].strip():
                    only_comment.add(line_no)
        body = ast.parse(src).body[0].body
    except (SyntaxError, tokenize.TokenError, IndexError, AttributeError):
        return {}
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        text = comments.get(end) if end not in only_comment else None
        if not text:  # a block of comment lines right above the field
            above, ln = [], node.lineno - 1
            while ln in only_comment:
                above.insert(0, comments[ln])
                ln -= 1
            text = " ".join(above)
        if text:
            out[node.target.id] = text
    return out


# -- type -> widget -------------------------------------------------------------------------------
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _widget(tp: Any, where: str) -> tuple[str, tuple]:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "dropdown", tuple(typing.get_args(tp))
    if tp is bool:
        return "checkbox", ()
    if tp is int:
        return "int", ()
    if tp is float:
        return "float", ()
    if tp is str or getattr(tp, "__name__", "") in ("Path", "PurePath"):
        return "text", ()
    if origin is list and typing.get_args(tp) and typing.get_args(tp)[0] is str:
        return "lines", ()
    if origin in (list, tuple):
        return "csv", ()
    raise TypeError(f"{where}: no form widget for type {tp!r}; add one in trainer/tab/forms.py")


def field_specs(cls: type, prefix: str = "") -> list[FieldSpec]:
    """Every editable leaf field of ``cls`` (nested dataclasses flattened to dotted paths)."""
    hints = typing.get_type_hints(cls)
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclassed section keeps its parents' help text
        if dataclasses.is_dataclass(klass):
            comments.update(_source_comments(klass))
    out: list[FieldSpec] = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        if not prefix and f.name in SKIP_FIELDS:
            continue
        tp, optional = _strip_optional(hints[f.name])
        path = prefix + f.name
        if dataclasses.is_dataclass(tp):
            out += field_specs(tp, path + ".")
            continue
        widget, choices = _widget(tp, path)
        help_text = str(f.metadata.get("help", "")) or comments.get(f.name, "")
        out.append(FieldSpec(path, tp, optional, getattr(defaults, f.name), help_text, widget, choices))
    return out


# -- values both ways -----------------------------------------------------------------------------
def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it."""
    if value is None:
        return None if spec.widget in ("int", "float", "dropdown") else ("" if spec.widget != "checkbox" else False)
    if spec.widget == "lines":
        return "\n".join(str(v) for v in value)
    if spec.widget == "csv":
        return ", ".join(str(v) for v in value)
    if spec.widget == "text":
        return str(value)
    return value


def from_widget(spec: FieldSpec, value: Any) -> Any:
    """A widget's value as plain data for the config module's ``from_dict`` (which checks the type)."""
    if spec.widget == "lines":
        return [ln.strip() for ln in str(value or "").splitlines() if ln.strip()]
    if spec.widget == "csv":
        text = str(value or "").strip()
        return [v.strip() for v in text.split(",")] if text else []
    if spec.widget in ("int", "float", "dropdown", "text") and (value is None or value == "") and spec.optional:
        return None
    if spec.widget == "int" and isinstance(value, float) and value.is_integer():
        return int(value)  # gr.Number may hand back 3.0 for 3
    return value


def config_to_values(cfg: Any, specs: list[FieldSpec]) -> list[Any]:
    return [to_widget(s, _get(cfg, s.path)) for s in specs]


def values_to_dict(specs: list[FieldSpec], values: list[Any], version: int | None = None) -> dict[str, Any]:
    """Widget values -> the nested dict that the config's YAML holds."""
    if len(values) != len(specs):
        raise ValueError(f"form has {len(specs)} fields, got {len(values)} values")
    out: dict[str, Any] = {} if version is None else {"version": version}
    for spec, value in zip(specs, values):
        node = out
        *sections, leaf = spec.path.split(".")
        for sec in sections:
            node = node.setdefault(sec, {})
        node[leaf] = from_widget(spec, value)
    return out


# -- Gradio ---------------------------------------------------------------------------------------
def _component(gr: Any, spec: FieldSpec, value: Any) -> Any:
    label = spec.name.replace("_", " ")
    kw = dict(label=label, info=spec.help or None, elem_id=spec.elem_id, value=to_widget(spec, value))
    if spec.widget == "checkbox":
        return gr.Checkbox(**kw)
    if spec.widget == "int":
        return gr.Number(precision=0, **kw)
    if spec.widget == "float":
        return gr.Number(**kw)
    if spec.widget == "dropdown":
        return gr.Dropdown(choices=list(spec.choices), **kw)
    if spec.widget == "lines":
        return gr.Textbox(lines=3, placeholder="one per line", **kw)
    if spec.widget == "csv":
        return gr.Textbox(placeholder="comma-separated", **kw)
    return gr.Textbox(**kw)


def build_form(specs: list[FieldSpec], cfg: Any, open_sections: tuple[str, ...] = ()) -> list[Any]:
    """Render the widgets inside the current Blocks context: top-level fields, then one accordion per section.

    Returns the components in ``specs`` order (the order every value list uses).
    """
    import gradio as gr

    comps: dict[str, Any] = {}
    top = [s for s in specs if not s.section]
    for s in top:
        comps[s.path] = _component(gr, s, _get(cfg, s.path))
    seen: list[str] = []
    for s in specs:
        if s.section and s.section not in seen:
            seen.append(s.section)
    for section in seen:
        with gr.Accordion(section.replace(".", " / "), open=section in open_sections,
                          elem_id="sec-" + section.replace(".", "-")):
            for s in specs:
                if s.section == section:
                    comps[s.path] = _component(gr, s, _get(cfg, s.path))
    return [comps[s.path] for s in specs]

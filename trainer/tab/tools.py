"""Analyze and Files tabs: forms generated from the ``lorad`` CLI's own argparse sub-parsers.

The CLI is the one definition of each tool's options, so the tab cannot drift
from it: positional arguments and path options become path boxes (confined to
the roots), flags become checkboxes, ``choices`` dropdowns, typed options
numbers.  A run is ``python <tab>/run_lorad.py <command> <args>`` in a
subprocess (argument list, no shell) so a crash or a large merge never takes the
app down; its output and any plots it writes are shown.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .security import PathNotAllowed

RUN_LORAD = Path(__file__).with_name("run_lorad.py")
PATH_OPTIONS = {"model", "report"}  # non-positional options that name files
WRITE_DESTS = {"out", "dst", "outdir", "report"}  # the arguments a tool writes (never into read-only roots)
SKIP_OPTIONS = {"help", "quiet"}
TOOL_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class ArgSpec:
    dest: str
    flag: str | None  # None for a positional
    kind: str  # path | text | checkbox | dropdown | int | float | lines
    help: str
    default: Any = None
    choices: tuple = ()
    required: bool = False


def lorad_parser() -> argparse.ArgumentParser:
    from ...lorad.cli import build_parser

    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def arg_specs(sub: argparse.ArgumentParser) -> list[ArgSpec]:
    out = []
    for a in sub._actions:
        if a.dest in SKIP_OPTIONS or isinstance(a, argparse._HelpAction):
            continue
        flag = None if not a.option_strings else max(a.option_strings, key=len)
        help_text = (a.help or "").replace("%(default)s", str(a.default))
        if flag is None or a.dest in PATH_OPTIONS:
            kind = "path"
        elif isinstance(a, argparse._StoreTrueAction):
            kind = "checkbox"
        elif isinstance(a, argparse._AppendAction):
            kind = "lines"
        elif a.choices:
            kind = "dropdown"
        elif a.type in (int, float):
            kind = a.type.__name__
        else:
            kind = "text"
        out.append(ArgSpec(a.dest, flag, kind, help_text, a.default, tuple(a.choices or ()),
                           bool(a.required or flag is None)))
    return out


def build_argv(specs: list[ArgSpec], values: list[Any], roots) -> list[str]:
    """Form values -> CLI arguments; paths are confined to ``roots``.  Raises ValueError naming the field."""
    argv: list[str] = []
    for s, v in zip(specs, values):
        if s.kind == "checkbox":
            if v:
                argv.append(s.flag)
            continue
        if s.kind == "lines":
            for item in [x.strip() for x in str(v or "").splitlines() if x.strip()]:
                argv += [s.flag, item]
            continue
        if v is None or str(v).strip() == "":
            if s.required:
                raise ValueError(f"{s.dest}: required")
            continue
        if s.kind == "path":
            v = str(roots.resolve(v, what=s.dest, write=s.dest in WRITE_DESTS))
        elif s.kind == "int":
            v = int(v)
        argv += [str(v)] if s.flag is None else [s.flag, str(v)]
    return argv


# Which argument of a tool a finished job's files fill (see :func:`job_values`).
JOB_FILL: dict[str, dict[str, str]] = {
    "inspect": {"file": "student"},
    "validate": {"file": "student", "model": "base"},
    "merge": {"base": "base", "lorad": "student", "out": "merged"},
    "analyze": {"student": "merged", "teacher": "base", "outdir": "analysis"},
}


def job_files(app, job_id: str) -> dict[str, str]:
    """A job's files for the tools: its student ``.lorad``, its base model (from the job's own
    config.yaml, as the trainer read it), and where a merge and an analysis of it go."""
    import yaml

    job = app.store.get(job_id)
    files = {k: str(v) for k, v in app.results.files(job).items()}
    try:
        cfg = yaml.safe_load(app.runner.config_path(job).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    base = (cfg.get("model") or {}).get("base")
    out = Path(job.out_dir)
    return {"student": files.get("student", ""), "base": str(base or ""),
            "merged": str(out / "merged-tab"), "analysis": str(out / "analysis")}


def job_values(command: str, specs: list[ArgSpec], files: dict[str, str]) -> list[Any]:
    """Tool form values with the job's files filled in (others left as their defaults)."""
    fill = JOB_FILL.get(command, {})
    return [files.get(fill[s.dest], "") if s.dest in fill else (bool(s.default) if s.kind == "checkbox" else
            (s.default if s.default is not None else "")) for s in specs]


def run_tool(command: str, argv: list[str], cwd: Path, timeout_s: float = TOOL_TIMEOUT_S) -> tuple[int, str]:
    """Run ``lorad <command> <argv>`` of this checkout; (exit code, combined output)."""
    proc = subprocess.run([sys.executable, str(RUN_LORAD), command, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _component(gr: Any, s: ArgSpec, command: str) -> Any:
    kw = dict(label=s.dest.replace("_", " ") + (" *" if s.required else ""), info=s.help or None,
              elem_id=f"tool-{command}-{s.dest}".replace("_", "-"))
    if s.kind == "checkbox":
        return gr.Checkbox(value=bool(s.default), **kw)
    if s.kind == "dropdown":
        return gr.Dropdown(["", *s.choices], value=s.default or "", **kw)
    if s.kind in ("int", "float"):
        return gr.Number(value=s.default, precision=0 if s.kind == "int" else None, **kw)
    if s.kind == "lines":
        return gr.Textbox(lines=2, placeholder="one per line", **kw)
    return gr.Textbox(value=s.default or "", placeholder="path inside the allowed folders" if s.kind == "path" else "",
                      **kw)


def build_tools_tab(app, commands: tuple[str, ...]) -> None:
    import gradio as gr

    try:
        subs = subcommands(lorad_parser())
    except ImportError as e:
        gr.Markdown(f"*Not available in this build:* the `lorad` CLI (lorad/cli.py) is missing ({e}).")
        return
    present = [c for c in commands if c in subs]
    if not present:
        gr.Markdown(f"*Not available in this build:* `lorad` has none of {', '.join(commands)}.")
        return
    for command in present:
        with gr.Tab(command, elem_id=f"tool-tab-{command}") if len(present) > 1 else gr.Group():
            sub = subs[command]
            gr.Markdown(f"`lorad {command}` — {sub.description or _help_of(command)}")
            specs = arg_specs(sub)
            if command in JOB_FILL:
                with gr.Row():
                    job_pick = gr.Dropdown([], label="files of a finished job", value=None, scale=3,
                                           elem_id=f"tool-job-{command}", allow_custom_value=True)
                    fill_btn = gr.Button("Fill from job", scale=1, elem_id=f"tool-fill-{command}")
            comps = [_component(gr, s, command) for s in specs]
            run_btn = gr.Button(f"Run {command}", variant="primary", elem_id=f"tool-run-{command}")
            out = gr.Textbox(label="output", lines=12, interactive=False, elem_id=f"tool-out-{command}")
            gallery = gr.Gallery(label="plots", elem_id=f"tool-plots-{command}", visible=command == "analyze",
                                 columns=2, object_fit="contain", height=420)

            def on_run(*values, _specs=specs, _command=command):
                try:
                    argv = build_argv(_specs, list(values), app.roots)
                except (ValueError, PathNotAllowed) as e:
                    return f"Not run: {e}", []
                rc, text = run_tool(_command, argv, app.roots.base)
                return f"$ lorad {_command} {' '.join(argv)}\n(exit {rc})\n{text}", _plots(_specs, values, app)

            run_btn.click(on_run, comps, [out, gallery])
            if command in JOB_FILL:
                def on_fill(job_id, _specs=specs, _command=command):
                    if not job_id:
                        return [gr.skip()] * len(_specs)
                    try:
                        return job_values(_command, _specs, job_files(app, job_id))
                    except KeyError:
                        return [gr.skip()] * len(_specs)

                def finished_jobs():
                    return gr.update(choices=[(f"{j.id} · {j.title}", j.id) for j in app.jobs()
                                              if j.status in ("finished", "stopped")])

                job_pick.focus(finished_jobs, None, job_pick)
                fill_btn.click(on_fill, [job_pick], comps)


def _help_of(command: str) -> str:
    try:
        parser = lorad_parser()
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for ca in a._choices_actions:
                    if ca.dest == command:
                        return ca.help or ""
    except ImportError:
        pass
    return ""


def _plots(specs: list[ArgSpec], values: tuple, app) -> list:
    """PNGs in an ``outdir`` argument (``lorad analyze`` writes its figures there), as images.

    Handed over as pixels, not paths, so Gradio needs no file-serving permission for them.
    """
    from PIL import Image

    for s, v in zip(specs, values):
        if s.dest == "outdir" and v:
            try:
                folder = app.roots.resolve(v, what="outdir")
            except PathNotAllowed:
                return []
            images = []
            for p in sorted(folder.glob("*.png")):
                with Image.open(p) as im:
                    images.append((im.convert("RGB"), p.name))
            return images
    return []

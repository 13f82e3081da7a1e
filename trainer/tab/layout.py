"""The page: tabs, generated forms, job panel, polling, and :func:`build_app` that assembles them.

Wiring only; behaviour is in :mod:`.app` (which never imports this module).

Element ids (``wadi-<what>-<kind>``, ``cfg-<section>-<field>``) are stable so the
browser tests and a ComfyUI/A1111 host page can find things.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any

import gradio as gr

from ..jobs.runner import JobRunner
from .app import Settings, TabApp, png_to_pil
from .forms import build_form
from .kinds import KIND_SOURCES, TrainKind
from .tools import build_tools_tab

POLL_S = 1.0
JOB_HEADERS = ["job", "title", "status", "device", "output", "started", "running for", "message"]
TRAIN_KINDS = ("distill", "personalize", "relation")
# Gradio 6 takes css only at launch(), which a host page controls; a <style> element travels with the Blocks.
STYLE = """<style>
.wadi-error{border-left:4px solid #d33;background:rgba(221,51,51,.08);padding:6px 10px;border-radius:4px}
.wadi-ok{border-left:4px solid #2a7;background:rgba(34,170,119,.08);padding:6px 10px;border-radius:4px}
</style>"""


def message(text: str) -> str:
    """A job/form message as a styled box: red for a refusal (``Not ...:``), green otherwise."""
    if not text:
        return ""
    head, sep, rest = text.partition(": ")
    failed = head.startswith(("Not ", "Select ", "No job")) or "error" in head.lower()
    body = (f"<b>{html.escape(head)}</b>: {html.escape(rest)}" if sep and failed else html.escape(text))
    return f'<div class="{"wadi-error" if failed else "wadi-ok"}">{body}</div>'


def blocks(app: TabApp) -> gr.Blocks:
    with gr.Blocks(title="WaDi trainer", analytics_enabled=False) as demo:
        gr.HTML(STYLE, visible=True, padding=False)
        gr.Markdown("## WaDi trainer — one-step distillation with LoRaD")
        with gr.Tabs():
            for kind in TRAIN_KINDS:
                k = app.kinds.get(kind)
                title = k.title if isinstance(k, TrainKind) else KIND_SOURCES.get(kind, (kind,))[0]
                with gr.Tab(title, id=kind, elem_id=f"wadi-tab-{kind}"):
                    if isinstance(k, TrainKind):
                        _training_tab(app, k)
                    else:
                        gr.Markdown(f"*Not available in this build.* {k or ''}")
            with gr.Tab("Analyze", id="analyze", elem_id="wadi-tab-analyze"):
                build_tools_tab(app, ("analyze",))
            with gr.Tab("Files", id="files", elem_id="wadi-tab-files"):
                build_tools_tab(app, ("inspect", "validate", "convert", "extract", "merge"))
    return demo


def _path_help(app: TabApp, k: TrainKind, specs):
    """Path fields say which base a relative path is taken from (the job gets the same absolute path)."""
    note = (f" Relative paths are taken from {app.roots.base} (where the tab started), else from a root's own "
            f"folder name (assets/... = the pack's read-only assets).")
    return [dataclasses.replace(s, help=(s.help + "." if s.help and not s.help.endswith(".") else s.help) + note)
            if s.path in k.path_fields else s for s in specs]


def _training_tab(app: TabApp, k: TrainKind) -> None:
    kind = k.kind
    specs = app.specs(kind)
    first = app.first_run_preset(kind)
    initial = k.load_yaml(app.preset_path(kind, first)) if first else k.config_cls()
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            with gr.Row():
                preset = gr.Dropdown(app.preset_choices(kind), label="preset", value=first, scale=3,
                                     elem_id=f"wadi-preset-{kind}", allow_custom_value=False)
                load_btn = gr.Button("Load preset", scale=1, elem_id=f"wadi-load-{kind}")
            with gr.Row():
                preset_name = gr.Textbox(label="save as", placeholder="my-run", scale=3,
                                         elem_id=f"wadi-preset-name-{kind}")
                overwrite = gr.Checkbox(label="overwrite", value=False, scale=1)
                save_btn = gr.Button("Save preset", scale=1, elem_id=f"wadi-save-{kind}")
            upload = gr.UploadButton(f"Load a preset file (.yaml, ≤ {app.settings.max_upload_bytes // 1024} KiB)",
                                     file_types=[".yaml", ".yml"], type="filepath", elem_id=f"wadi-upload-{kind}",
                                     size="sm")
            form_msg = gr.HTML(message(f"Preset {first} (shipped) is loaded: press Start to run it.")
                                   if first else "", elem_id=f"wadi-form-msg-{kind}")
            comps = build_form(_path_help(app, k, specs), initial, open_sections=("model", "data", "train", "output"))
            with gr.Accordion("YAML and command (preview)", open=False):
                preview_btn = gr.Button("Preview")
                yaml_view = gr.Code(language="yaml", label="config.yaml")
                cmd_view = gr.Textbox(label="command", interactive=False)
        with gr.Column(scale=6):
            with gr.Row():
                devices = gr.Textbox(app.settings.default_devices, label="devices",
                                     info="'cpu', a GPU index '0', or several '0,1' (accelerate launch)",
                                     elem_id=f"wadi-devices-{kind}", scale=2)
                queue = gr.Checkbox(True, label="queue if busy", info="else refuse while the device is busy",
                                    elem_id=f"wadi-queue-{kind}", scale=1)
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id=f"wadi-start-{kind}")
                stop_btn = gr.Button("Stop / cancel", variant="stop", elem_id=f"wadi-stop-{kind}")
                resume_btn = gr.Button("Resume", elem_id=f"wadi-resume-{kind}")
            job_msg = gr.HTML(elem_id=f"wadi-job-msg-{kind}")
            job_dd = gr.Dropdown([], label="job", value=None, elem_id=f"wadi-job-{kind}", allow_custom_value=True)
            status = gr.Markdown(elem_id=f"wadi-status-{kind}")
            progress = gr.Textbox(label="progress", interactive=False, elem_id=f"wadi-progress-{kind}")
            with gr.Row():
                sample = gr.Image(label="latest samples (one-step, as in ComfyUI)", type="pil", interactive=False,
                                  elem_id=f"wadi-sample-{kind}", height=320)
                plot = gr.Image(label="losses", type="pil", interactive=False, elem_id=f"wadi-plot-{kind}",
                                height=320)
            results = gr.File(label="results (download)", file_count="multiple", interactive=False,
                              elem_id=f"wadi-results-{kind}")
            with gr.Row(visible=app.results.comfy_lorad_dir is not None):
                comfy_btn = gr.Button("Copy the .lorad to ComfyUI models/lorad", elem_id=f"wadi-comfy-copy-{kind}",
                                      scale=3)
                comfy_over = gr.Checkbox(label="overwrite", value=False, scale=1)
            log = gr.Textbox(label="log (tail)", lines=10, max_lines=10, interactive=False, autoscroll=True,
                             elem_id=f"wadi-log-{kind}")
            table = gr.Dataframe(headers=JOB_HEADERS, value=[], label="jobs (kept across restarts; queued ones "
                                 "wait here: select one and press Stop / cancel to drop it)",
                                 interactive=False, elem_id=f"wadi-jobs-{kind}", wrap=True,
                                 column_widths=["20%", "10%", "8%", "6%", "16%", "10%", "8%", "22%"])
    shown = gr.State({})

    n = len(comps)

    def on_load(name: str):
        try:
            values = app.load_preset(kind, name)
        except ValueError as e:
            return [gr.skip()] * n + [message(f"Not loaded: {e}")]
        return values + [message(f"Loaded preset {name}.")]

    def on_upload(path: str | None):
        if not path:
            return [gr.skip()] * n + [""]
        try:
            values = app.load_uploaded(kind, path)
        except (ValueError, OSError) as e:
            return [gr.skip()] * n + [message(f"Not loaded: {e}")]
        return values + [message("Loaded the uploaded preset.")]

    def on_save(name: str, over: bool, *values: Any):
        try:
            path = app.save_preset(kind, name, list(values), overwrite=over)
        except (ValueError, OSError) as e:
            return gr.skip(), message(f"Not saved: {e}")
        return gr.update(choices=app.preset_choices(kind), value=path.stem), message(f"Saved preset to {path}.")

    def on_start(devs: str, q: bool, *values: Any):
        msg, job_id = app.start(kind, list(values), devs, q)
        return message(msg), (job_id if job_id else gr.skip())

    def on_resume(job_id: str | None, devs: str, q: bool):
        if not job_id:
            return message("Select a job: to resume it."), gr.skip()
        msg, new_id = app.resume(job_id, devs, q)
        return message(msg), (new_id if new_id else gr.skip())

    def on_stop(job_id: str | None):
        return message(app.stop(job_id) if job_id else "Select a job: to stop or cancel it.")

    def on_copy(job_id: str | None, over: bool):
        return message(app.copy_to_comfy(job_id, over) if job_id else "Select a job: to copy its .lorad.")

    def on_tick(job_id: str | None, last: dict):
        jobs = app.jobs(kind)
        ids = [j.id for j in jobs]
        choices = [(f"{j.id} · {j.status}", j.id) for j in jobs]
        # Only an empty/unknown selection is filled in here (with the newest job).  Writing the
        # value on every tick would race with Start/Resume: a tick that began before the click
        # would put the old job back after the click selected the new one.
        pick = gr.update(choices=choices)
        if job_id not in ids:
            job_id = ids[0] if ids else None
            pick = gr.update(choices=choices, value=job_id)
        v = app.view(job_id)
        sample_key = (job_id, str(v.sample) if v.sample else None,
                      v.sample.stat().st_mtime_ns if v.sample else None)
        plot_key = (job_id, v.n_records)
        sample_out = gr.skip() if last.get("sample") == sample_key else _open_image(v.sample)
        plot_out = gr.skip() if last.get("plot") == plot_key else png_to_pil(v.plot_png)
        files = [str(p) for p in app.downloads(job_id)] if v.job is not None and not v.job.active else []
        files_key = (job_id, tuple(files))
        files_out = gr.skip() if last.get("files") == files_key else (files or None)
        return ([app.job_row(j) for j in jobs], pick, v.status, v.progress, sample_out, plot_out, v.log,
                files_out, {"sample": sample_key, "plot": plot_key, "files": files_key})

    load_btn.click(on_load, [preset], comps + [form_msg])
    upload.upload(on_upload, [upload], comps + [form_msg])
    save_btn.click(on_save, [preset_name, overwrite, *comps], [preset, form_msg])
    preview_btn.click(lambda *vals: app.preview(kind, list(vals)), comps, [yaml_view, cmd_view])
    start_btn.click(on_start, [devices, queue, *comps], [job_msg, job_dd])
    resume_btn.click(on_resume, [job_dd, devices, queue], [job_msg, job_dd])
    stop_btn.click(on_stop, [job_dd], [job_msg])
    comfy_btn.click(on_copy, [job_dd, comfy_over], [job_msg])
    tick_outputs = [table, job_dd, status, progress, sample, plot, log, results, shown]
    gr.Timer(POLL_S).tick(on_tick, [job_dd, shown], tick_outputs, show_progress="hidden")


def _open_image(path):
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def build_app(settings: Settings | None = None, kinds: dict[str, TrainKind | str] | None = None,
              runner: JobRunner | None = None, monitor: bool = True):
    """The trainer as one ``gr.Blocks`` (importable by a WebUI extension; see docs/trainer-tab.md)."""
    app = TabApp(settings or Settings.create(), kinds=kinds, runner=runner)
    if monitor:
        app.runner.start_monitor()
    demo = blocks(app)
    demo.wadi_app = app  # for hosts (and tests) that need the runner, e.g. to stop jobs on shutdown
    return demo

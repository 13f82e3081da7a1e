"""The page: tabs, generated forms, job panel, polling, and :func:`build_app` that assembles them.

Wiring only; behaviour is in :mod:`.app` (which never imports this module).

Element ids (``wadi-<what>-<kind>``, ``cfg-<section>-<field>``) are stable so the
browser tests and a ComfyUI/A1111 host page can find things.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..jobs.runner import JobRunner
from .app import Settings, TabApp, png_to_pil
from .forms import build_form
from .kinds import KIND_SOURCES, TrainKind
from .tools import build_tools_tab

POLL_S = 1.0
JOB_HEADERS = ["job", "status", "device", "started", "running for", "message"]
TRAIN_KINDS = ("distill", "personalize", "relation")


def blocks(app: TabApp) -> gr.Blocks:
    with gr.Blocks(title="WaDi trainer", analytics_enabled=False) as demo:
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


def _training_tab(app: TabApp, k: TrainKind) -> None:
    kind = k.kind
    specs = app.specs(kind)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            with gr.Row():
                preset = gr.Dropdown(app.preset_choices(kind), label="preset", value=None, scale=3,
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
            form_msg = gr.Markdown(elem_id=f"wadi-form-msg-{kind}")
            comps = build_form(specs, k.config_cls(), open_sections=("model", "data", "train", "output"))
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
                stop_btn = gr.Button("Stop", variant="stop", elem_id=f"wadi-stop-{kind}")
                resume_btn = gr.Button("Resume", elem_id=f"wadi-resume-{kind}")
            job_msg = gr.Markdown(elem_id=f"wadi-job-msg-{kind}")
            job_dd = gr.Dropdown([], label="job", value=None, elem_id=f"wadi-job-{kind}", allow_custom_value=True)
            status = gr.Markdown(elem_id=f"wadi-status-{kind}")
            progress = gr.Textbox(label="progress", interactive=False, elem_id=f"wadi-progress-{kind}")
            with gr.Row():
                sample = gr.Image(label="latest samples (one-step, as in ComfyUI)", type="pil", interactive=False,
                                  elem_id=f"wadi-sample-{kind}", height=320)
                plot = gr.Image(label="losses", type="pil", interactive=False, elem_id=f"wadi-plot-{kind}",
                                height=320)
            log = gr.Textbox(label="log (tail)", lines=10, max_lines=10, interactive=False, autoscroll=True,
                             elem_id=f"wadi-log-{kind}")
            table = gr.Dataframe(headers=JOB_HEADERS, value=[], label="jobs (kept across restarts)",
                                 interactive=False, elem_id=f"wadi-jobs-{kind}", wrap=True,
                                 column_widths=["30%", "10%", "8%", "14%", "10%", "28%"])
    shown = gr.State({})

    n = len(comps)

    def on_load(name: str):
        try:
            values = app.load_preset(kind, name)
        except ValueError as e:
            return [gr.skip()] * n + [f"**Not loaded:** {e}"]
        return values + [f"Loaded preset **{name}**."]

    def on_upload(path: str | None):
        if not path:
            return [gr.skip()] * n + [""]
        try:
            values = app.load_uploaded(kind, path)
        except (ValueError, OSError) as e:
            return [gr.skip()] * n + [f"**Not loaded:** {e}"]
        return values + ["Loaded the uploaded preset."]

    def on_save(name: str, over: bool, *values: Any):
        try:
            path = app.save_preset(kind, name, list(values), overwrite=over)
        except (ValueError, OSError) as e:
            return gr.skip(), f"**Not saved:** {e}"
        return gr.update(choices=app.preset_choices(kind), value=path.stem), f"Saved preset to `{path}`."

    def on_start(devs: str, q: bool, *values: Any):
        msg, job_id = app.start(kind, list(values), devs, q)
        return msg, (job_id if job_id else gr.skip())

    def on_resume(job_id: str | None, devs: str, q: bool):
        if not job_id:
            return "Select a job to resume.", gr.skip()
        msg, new_id = app.resume(job_id, devs, q)
        return msg, (new_id if new_id else gr.skip())

    def on_stop(job_id: str | None):
        return app.stop(job_id) if job_id else "Select a job to stop."

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
        return ([app.job_row(j) for j in jobs], pick, v.status, v.progress,
                sample_out, plot_out, v.log, {"sample": sample_key, "plot": plot_key})

    load_btn.click(on_load, [preset], comps + [form_msg])
    upload.upload(on_upload, [upload], comps + [form_msg])
    save_btn.click(on_save, [preset_name, overwrite, *comps], [preset, form_msg])
    preview_btn.click(lambda *vals: app.preview(kind, list(vals)), comps, [yaml_view, cmd_view])
    start_btn.click(on_start, [devices, queue, *comps], [job_msg, job_dd])
    resume_btn.click(on_resume, [job_dd, devices, queue], [job_msg, job_dd])
    stop_btn.click(on_stop, [job_dd], [job_msg])
    tick_outputs = [table, job_dd, status, progress, sample, plot, log, shown]
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

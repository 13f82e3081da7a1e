"""``wadi tab``: start the trainer's Gradio app (loopback only unless ``--listen``)."""

from __future__ import annotations

import argparse
import os

from ..jobs.runner import DEFAULT_GRACE_S, DEFAULT_GRACE_STEPS

DEFAULT_PORT = 7861  # 7860 is Gradio's/A1111's default; keep clear of it


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tab", help="the trainer in the browser (Gradio): forms, jobs, live progress")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=int(os.environ.get("WADI_TAB_PORT", DEFAULT_PORT)),
                   help="port (default %(default)s; env WADI_TAB_PORT)")
    p.add_argument("--listen", action="store_true",
                   help="accept connections from other machines (binds 0.0.0.0; prints a warning)")
    p.add_argument("--root", action="append", metavar="DIR",
                   help="a folder the tab may read and write (repeatable; default: the current folder; the first "
                        "is the base of relative paths). The pack's assets/ folder is always readable and never "
                        "writable. Every path in a form must resolve inside one of them. No file under them is "
                        "served by URL: the page gets only the sample grids, plots and exported files of jobs "
                        "this app ran")
    p.add_argument("--jobs-dir", help="job store and per-job folders (default <first root>/outputs/tab/jobs)")
    p.add_argument("--presets-dir", help="user presets (default <first root>/outputs/tab/presets)")
    p.add_argument("--max-upload-kb", type=int, default=1024, help="largest accepted upload (default %(default)s KiB)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S,
                   help="least seconds a stopped job gets to finish its step and save a checkpoint before "
                        "SIGTERM (default %(default)g)")
    p.add_argument("--grace-steps", type=float, default=DEFAULT_GRACE_STEPS,
                   help="...or this many of the job's median step times, when that is longer (default %(default)g)")
    p.add_argument("--devices", help="default devices for new jobs ('cpu', '0', '0,1')")
    p.add_argument("--comfy-lorad-dir", metavar="DIR",
                   help="ComfyUI's models/lorad folder (inside a --root): offers 'copy the .lorad to ComfyUI' "
                        "(set by the ComfyUI sidebar)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..jobs.runner import RunnerBusy
    from .app import Settings
    from .layout import build_app
    from .security import bind_host

    private_gradio_cache()
    kw = {"default_devices": args.devices} if args.devices else {}
    if args.comfy_lorad_dir:
        kw["comfy_lorad_dir"] = args.comfy_lorad_dir
    settings = Settings.create(roots=args.root, jobs_dir=args.jobs_dir, presets_dir=args.presets_dir,
                               max_upload_bytes=args.max_upload_kb * 1024, grace_s=args.grace,
                               grace_steps=args.grace_steps, **kw)
    host = bind_host(args.listen, args.port, settings.roots.roots)
    try:
        demo = build_app(settings)
    except RunnerBusy as e:
        print(f"wadi tab: error: {e}", file=sys.stderr)
        return 1
    print(f"[wadi tab] http://{'127.0.0.1' if host == '127.0.0.1' else host}:{args.port}  "
          f"roots: {settings.roots.describe()}  jobs: {settings.jobs_dir}", flush=True)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=args.port, inbrowser=not args.no_browser, **launch_options(settings))
    return 0


def private_gradio_cache() -> None:
    """Give this app its own Gradio upload/cache folder (removed at exit) unless ``GRADIO_TEMP_DIR`` is set.

    Gradio serves everything in that folder; the shared default (``/tmp/gradio``) would also
    expose what other Gradio apps on this machine cached.
    """
    if os.environ.get("GRADIO_TEMP_DIR"):
        return
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="wadi-tab-gradio-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, True)


def launch_options(settings) -> dict:
    """``launch()`` keywords every host of the tab should use.

    No ``allowed_paths``: Gradio's ``/gradio_api/file=`` route then serves only its own
    cache (what a handler returned - sample grids, plots, a finished job's exports) and
    uploads, never a file under the roots by its path (a root may be a home folder).
    """
    return dict(share=False, max_file_size=settings.max_upload_bytes, allowed_paths=[], show_error=True, quiet=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wadi_lorad.trainer.tab", description="WaDi trainer tab (Gradio)")
    add_arguments(p)
    return run(p.parse_args(argv))

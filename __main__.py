"""``python -m wadi_lorad <command>`` or ``python path/to/ComfyUI-WaDi <command>``.

Commands: ``wadi`` sub-commands (distill, sample, demo, ...) and ``lorad``
sub-commands under ``python -m wadi_lorad lorad ...``.
"""

import sys

if not __package__:
    # Run as a plain script (``python <pack dir>``): sys.path[0] is the pack folder.
    # Drop it so our ``nodes``/``trainer`` folders never shadow other top-level
    # packages, then import the pack under its unique name.
    _root = sys.path.pop(0)
    import importlib.util as _ilu

    _spec = _ilu.spec_from_file_location("_wadi_bootstrap", f"{_root}/_bootstrap.py")
    _boot = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_boot)
    _boot.register()
    from wadi_lorad.trainer.cli import main
else:
    from .trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())

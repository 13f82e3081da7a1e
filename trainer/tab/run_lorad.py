"""``python run_lorad.py <lorad command> ...``: the ``lorad`` CLI of the checkout this file is in.

Run by path from the tab so a tool always uses the same code as the app,
whatever copy of ``wadi_lorad`` is installed.
"""

import importlib.util
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("_wadi_bootstrap", root / "_bootstrap.py")
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    boot.register()
    from wadi_lorad.lorad.cli import main

    sys.exit(main(sys.argv[1:]))

"""Run one training command and record its exit status in a file (run by path, stdlib only).

``python jobwrap.py <rc file> -- <command ...>``

The job runner launches this as the leader of the job's session.  Writing the
exit status to a file (atomically) lets an app that restarted while the job ran
still learn how it ended: it is not the parent any more, so it cannot ``wait``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def _note(signum, frame):  # noqa: ARG001
    # A group-wide SIGTERM reaches the child too; this leader just outlives it to write
    # the status.  (A handler, not SIG_IGN: an ignored disposition would be inherited
    # across exec and the trainer would ignore SIGTERM as well.)
    pass


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: jobwrap.py RC_FILE -- COMMAND...", file=sys.stderr)
        return 2
    rc_file, cmd = argv[0], argv[2:]
    signal.signal(signal.SIGTERM, _note)
    signal.signal(signal.SIGINT, _note)
    try:
        proc = subprocess.Popen(cmd)  # an argument list: nothing goes through a shell
    except OSError as e:
        print(f"cannot start {cmd[0]!r}: {e}", file=sys.stderr)
        rc = 127
    else:
        while True:
            try:
                rc = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
    tmp = f"{rc_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{rc}\n")
    os.replace(tmp, rc_file)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

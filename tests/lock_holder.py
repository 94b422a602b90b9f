"""A second process that holds cloome's output lock on a folder, for the concurrent-writer tests."""

import contextlib
import subprocess
import sys


@contextlib.contextmanager
def lock_held_elsewhere(folder, command: str):
    """Start a process that takes :class:`~cloome_hf.safe_io.OutputLock` on ``folder`` as ``command`` and keeps it;
    yields its pid once the lock is held. On exit the process is killed, which leaves its lock file behind (as a
    crashed run would)."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from cloome_hf.safe_io import OutputLock; "
                               f"OutputLock({str(folder)!r}, {command!r}).acquire(); print('locked', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()

"""A second process that holds cloome's output lock on a folder, for the concurrent-writer tests."""

import contextlib
import multiprocessing
import os
import signal
import time


def _hold(folder: str, command: str, ready) -> None:
    from cloome_hf.safe_io import OutputLock

    OutputLock(folder, command).acquire()
    ready.send("locked")
    time.sleep(60)


@contextlib.contextmanager
def lock_held_elsewhere(folder, command: str):
    """Fork a process that takes :class:`~cloome_hf.safe_io.OutputLock` on ``folder`` as ``command`` and keeps it;
    yields its pid once the lock is held. On exit the process is killed, which leaves its lock file behind (as a
    crashed run would). Forked, not started afresh: the child has the package imported already (a new interpreter
    spends 6-7 s importing it) and touches nothing but the lock file."""
    receive, send = multiprocessing.Pipe(duplex=False)
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(os.fspath(folder), command, send),
                                                         daemon=True)
    holder.start()
    try:
        assert receive.poll(60) and receive.recv() == "locked", "the lock holder did not take the lock"
        yield holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()

"""Real multi-process runs without a new interpreter per process: processes forked from one forkserver that has
imported the package once (a fresh interpreter spends 6-7 s of CPU importing torch, transformers and cloome_hf;
a test suite that starts ten of them pays a minute for it).

:func:`launch_train` starts ``cloome train`` the way ``accelerate launch --multi_gpu --num_processes N`` does:
the environment comes from accelerate's own launcher code (``prepare_multi_gpu_env``), plus the variables its
``torchrun`` gives each process (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...), so each process builds its
``Accelerator`` from the same variables a launched one reads. tests/train/test_training_distributed.py also runs
one case through the real ``accelerate launch`` command.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from pathlib import Path

from local_servers import free_port

#: What the forkserver imports once, before it forks any process.
PRELOAD = ["torch", "cloome_hf", "cloome_hf.cli", "cloome_hf.train.loop"]


def forkserver():
    """The ``forkserver`` multiprocessing context, its server preloaded with :data:`PRELOAD` (started on first use,
    then shared by every test of this pytest process)."""
    multiprocessing.set_forkserver_preload(PRELOAD)
    return multiprocessing.get_context("forkserver")


def accelerate_environment(num_processes: int, port: int) -> dict[str, str]:
    """The environment ``accelerate launch --multi_gpu --num_processes N --mixed_precision no --dynamo_backend no``
    prepares for its processes (computed by accelerate's launcher functions)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args([
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "cloome_hf.cli"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def _run_process(rank: int, world_size: int, environment: dict, argv: list, log: str, cwd: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0", ROLE_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size), ROLE_WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=environment["MASTER_PORT"])
    # A forkserver's children default to starting theirs through it too; a launched process forks its DataLoader
    # workers (Linux's default), and through the server each worker would be sent the whole pickled dataset.
    multiprocessing.set_start_method("fork", force=True)
    import torch

    torch.set_num_threads(int(environment.get("OMP_NUM_THREADS", "1")))
    from cloome_hf.cli import main

    try:
        status = main(argv)
    except BaseException:  # noqa: BLE001  the parent reads it from the log
        with open(log, "a") as f:
            f.write(traceback.format_exc())
        os._exit(1)
    os._exit(status or 0)


def launch_train(argv: list[str], num_processes: int = 2, timeout: float = 300, env: dict | None = None) -> None:
    """Run ``cloome train ARGV`` in ``num_processes`` processes (gloo on CPU) and wait; fails with the processes'
    tracebacks unless every one exits 0. ``env`` is added to this process's environment for them."""
    import pytest

    port = free_port()
    environment = {**accelerate_environment(num_processes, port), "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                   **(env or {})}
    context = forkserver()
    logs = [Path(os.environ.get("TMPDIR", "/tmp")) / f"cloome-launch-{port}-rank{r}.log" for r in range(num_processes)]
    processes = [context.Process(target=_run_process, args=(rank, num_processes, environment,
                                                            ["train", *map(str, argv)], str(logs[rank]),
                                                            os.getcwd()))
                 for rank in range(num_processes)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    stuck = [p for p in processes if p.is_alive()]
    for process in stuck:  # e.g. one waits in a collective the other never reaches
        process.kill()
        process.join()
    errors = "".join(log.read_text() for log in logs if log.exists())
    for log in logs:
        log.unlink(missing_ok=True)
    if stuck:
        pytest.fail(f"the {num_processes}-process run did not finish in {timeout:.0f} s:\n{errors[-3000:]}")
    codes = [p.exitcode for p in processes]
    assert codes == [0] * num_processes, f"exit codes {codes}:\n{errors[-3000:]}"

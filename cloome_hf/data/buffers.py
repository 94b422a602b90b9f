"""The tensors a ``DataLoader`` worker hands over: shared memory, reused once the consumer gives a batch back.

A tensor a worker returns reaches the main process through shared memory. Fresh shared memory pays for every page
each time: allocated and zeroed in the worker, freed in the main process once the batch is dropped (on the 2-core
test machine about 0.5 ms per MB, as much as the whole augmentation of a 5 x 520 x 520 site, whose float32 pixels
are 5.4 MB). Upstream's loader pays the same per byte.

So each worker process keeps a few batch buffers (:class:`WorkerBuffers`, :data:`SLOTS_PER_WORKER` of them) and
reuses one only after the consumer has said that it is done with the batch that used it: :func:`release_batch`,
which the training step calls after the optimiser step. The batch carries a ``buffer_tokens`` entry, one
:class:`BufferToken` per pooled tensor, which points into its worker's slot table (a small tensor in shared memory
that only that worker takes slots from, and that only releases free again):

* a slot goes from free to in use only in its worker (:meth:`WorkerBuffers.take`, which also advances the slot's
  generation), and from in use to free only through the token of its current generation, so a stale token, or one
  released twice, frees nothing;
* a batch that is never released keeps its slot, and a worker without a free slot hands over fresh shared memory:
  a consumer that never calls :func:`release_batch` gets what a plain ``DataLoader`` gives, fresh memory for every
  batch, and never a buffer that is written while it still reads it.

Without workers the main process reuses its batch tensors the same way (:class:`ProcessBuffers`): fresh private
memory costs its pages too (about 0.4 ms of the 2.7 ms a 5.4 MB float32 site takes at crop 520, measured with
``benchmarks/bench_cpu_path.py``). There a :class:`ReturnToken` holds the tensor itself and gives it back to the
pool's free list when released, so a batch that is dropped unreleased is freed as usual: the pool keeps only
what was given back.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

#: Reusable buffers per worker process: its prefetched batches, the batch in use and the one accelerate reads
#: ahead, and one to spare.
SLOTS_PER_WORKER = 5
_FREE, _IN_USE = 0, 1


def fresh_tensor(shape: Sequence[int], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, in shared memory when ``shared`` (``Tensor.share_memory_`` would first allocate
    private memory and copy it): a worker's batch then reaches the main process without a copy."""
    if not shared:
        return torch.empty(tuple(shape), dtype=dtype)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))


class BufferToken:
    """A pooled tensor's claim on its worker's slot: ``slots`` ((S, 2) int64 in shared memory: state, generation),
    ``slot`` and ``generation``. A plain object, so that ``pin_memory`` and ``accelerate`` pass it on untouched."""

    __slots__ = ("slots", "slot", "generation")

    def __init__(self, slots: torch.Tensor, slot: int, generation: int):
        self.slots, self.slot, self.generation = slots, slot, generation

    def release(self) -> None:
        """Free the slot, if this token is still its current claim."""
        if int(self.slots[self.slot, 1]) == self.generation:
            self.slots[self.slot, 0] = _FREE

    def __repr__(self) -> str:
        return f"BufferToken(slot={self.slot}, generation={self.generation})"


class WorkerBuffers:
    """The reusable shared-memory buffers of one worker process (made there, on first use)."""

    def __init__(self, slots: int = SLOTS_PER_WORKER):
        self.slots = torch.zeros(slots, 2, dtype=torch.int64).share_memory_()
        self.buffers: dict[int, torch.Tensor] = {}
        self.pid = os.getpid()

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, BufferToken | None]:
        """A shared-memory tensor of ``shape`` and its token: a free slot's buffer (remade if it held another shape
        or dtype), else fresh shared memory and no token."""
        free = torch.nonzero(self.slots[:, 0] == _FREE)
        if not len(free):
            return fresh_tensor(shape, dtype, shared=True), None
        slot = int(free[0, 0])
        buffer = self.buffers.get(slot)
        if buffer is None or tuple(buffer.shape) != tuple(shape) or buffer.dtype != dtype:
            buffer = self.buffers[slot] = fresh_tensor(shape, dtype, shared=True)
        self.slots[slot, 1] += 1
        self.slots[slot, 0] = _IN_USE
        return buffer, BufferToken(self.slots, slot, int(self.slots[slot, 1]))


class ReturnToken:
    """A main-process batch tensor's way back into its :class:`ProcessBuffers`: released once, it joins the pool's
    free list (a second release does nothing)."""

    __slots__ = ("pool", "tensor")

    def __init__(self, pool: "ProcessBuffers", tensor: torch.Tensor):
        self.pool, self.tensor = pool, tensor

    def release(self) -> None:
        tensor, self.tensor = self.tensor, None
        if tensor is not None:
            self.pool.give_back(tensor)

    def __repr__(self) -> str:
        return f"ReturnToken(released={self.tensor is None})"


class ProcessBuffers:
    """Reused batch tensors of the main process (no workers): private memory, a free list of released tensors.

    Unlike :class:`WorkerBuffers` the pool holds no tensor that is in use: a batch that is never released is
    freed when it is dropped, and the pool keeps at most ``slots`` released tensors."""

    def __init__(self, slots: int = SLOTS_PER_WORKER):
        self.slots = int(slots)
        self.free: list[torch.Tensor] = []

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, ReturnToken]:
        """A released tensor of ``shape`` and ``dtype`` if there is one, else a fresh one; and its token."""
        shape = tuple(shape)
        for i, tensor in enumerate(self.free):
            if tuple(tensor.shape) == shape and tensor.dtype == dtype:
                tensor = self.free.pop(i)
                break
        else:
            tensor = fresh_tensor(shape, dtype, shared=False)
        return tensor, ReturnToken(self, tensor)

    def give_back(self, tensor: torch.Tensor) -> None:
        self.free.append(tensor)
        del self.free[:-self.slots]  # the oldest beyond the bound are dropped (freed once nothing holds them)


def release_batch(batch: Any) -> None:
    """Give ``batch``'s pooled buffers back to the workers that filled them.

    Call it once, when nothing will read the batch's tensors again (the training step does, after the optimiser
    step): a later batch may then be written into them. The tokens are taken out of the batch, so a second call
    does nothing; a batch without them (no workers, or not a collator batch) is left alone."""
    tokens = batch.pop("buffer_tokens", None) if isinstance(batch, dict) else None
    for token in tokens or ():
        if isinstance(token, (BufferToken, ReturnToken)):
            token.release()


__all__ = ["SLOTS_PER_WORKER", "BufferToken", "ProcessBuffers", "ReturnToken", "WorkerBuffers", "fresh_tensor",
           "release_batch"]

"""Workers (and the main process without workers) reuse the buffers of released batches, and never write into a
batch still in use."""

import gc
import weakref

import numpy as np
import pytest
import torch

from cloome_hf.data import build_dataloader, make_synthetic_dataset, release_batch
from cloome_hf.data.buffers import SLOTS_PER_WORKER, BufferToken, ProcessBuffers, ReturnToken, WorkerBuffers
from cloome_hf.transforms import CloomeTrainTransform

EPOCHS = 3


@pytest.fixture(scope="module")
def syn():
    return make_synthetic_dataset(num_molecules=48, sites_per_molecule=2, num_plates=2, image_size=32, seed=0)


def _loader(syn, workers: int, output: str = "pixel_values"):
    transform = CloomeTrainTransform(crop_size=(24, 24), random_resized_crop_scale=None)
    return build_dataloader(syn, None, batch_size=6, train=True, transform=transform, num_workers=workers, seed=3,
                            output=output)


def _reference(syn, output: str) -> dict[tuple[int, str], torch.Tensor]:
    """(epoch, first sample key) -> the batch's pixels, read in the main process (no workers) and never released,
    so no batch reuses another's memory."""
    loader, key = _loader(syn, 0, output), "pixel_values" if output == "pixel_values" else "images"
    out, pointers = {}, set()
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            pointers.add(batch[key].data_ptr())
            out[epoch, batch["sample_key"][0]] = (batch[key].clone(), batch)
    assert len(pointers) == len(out)  # every batch held is its own memory
    return {k: pixels for k, (pixels, _) in out.items()}


@pytest.mark.parametrize("output", ["pixel_values", "uint8"])
def test_released_batches_reuse_buffers_and_keep_their_pixels(syn, output):
    reference, key = _reference(syn, output), "pixel_values" if output == "pixel_values" else "images"
    loader, generations = _loader(syn, 2, output), []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            torch.testing.assert_close(batch[key], reference[epoch, batch["sample_key"][0]], rtol=0, atol=0)
            tokens = batch["buffer_tokens"]
            assert len(tokens) == 1 and isinstance(tokens[0], BufferToken)  # never ran out of slots
            generations.append(tokens[0].generation)
            release_batch(batch)
            assert "buffer_tokens" not in batch  # given back once
    # 3 epochs x 16 batches over 2 workers x 5 slots: slots were taken again after their batches were released
    assert len(generations) == EPOCHS * len(syn) // 6 and max(generations) > 1


def test_batches_kept_without_release_are_never_overwritten(syn):
    reference = _reference(syn, "pixel_values")
    loader, kept = _loader(syn, 2), []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        kept += [(epoch, batch) for batch in loader]
    for epoch, batch in kept:  # read only now, after every later batch was written
        torch.testing.assert_close(batch["pixel_values"], reference[epoch, batch["sample_key"][0]], rtol=0, atol=0)
    tokens = [t for _, batch in kept for t in batch["buffer_tokens"]]
    # each worker claimed its slots once, then handed over fresh memory
    assert sum(isinstance(t, BufferToken) for t in tokens) == 2 * SLOTS_PER_WORKER
    assert all(t is None for t in tokens[-len(tokens) // 2:])


def test_a_token_frees_its_slot_once_and_only_while_current():
    pool = WorkerBuffers(slots=2)
    a, token_a = pool.take((4, 3), torch.float32)
    b, token_b = pool.take((4, 3), torch.float32)
    assert a.is_shared() and b.is_shared() and a.data_ptr() != b.data_ptr()
    assert pool.take((4, 3), torch.float32)[1] is None  # no free slot: fresh memory, nothing to give back
    token_a.release()
    again, token_again = pool.take((4, 3), torch.float32)
    assert again.data_ptr() == a.data_ptr() and token_again.generation == token_a.generation + 1
    token_a.release()  # stale: the slot is claimed by token_again now
    assert pool.take((4, 3), torch.float32)[1] is None
    token_b.release()
    other, _ = pool.take((2, 2), torch.uint8)  # another shape: the slot's buffer is remade
    assert other.shape == (2, 2) and other.dtype == torch.uint8 and other.data_ptr() != b.data_ptr()
    batch = {"buffer_tokens": [token_again, None]}
    release_batch(batch)
    release_batch(batch)  # tokens were taken out: a second call does nothing
    assert "buffer_tokens" not in batch and np.array_equal(pool.slots[:, 0].numpy(), [0, 1])


@pytest.mark.parametrize("output", ["pixel_values", "uint8"])
def test_main_process_reuses_released_batches_and_keeps_their_pixels(syn, output):
    reference, key = _reference(syn, output), "pixel_values" if output == "pixel_values" else "images"
    loader, pointers = _loader(syn, 0, output), []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            torch.testing.assert_close(batch[key], reference[epoch, batch["sample_key"][0]], rtol=0, atol=0)
            assert [type(t) for t in batch["buffer_tokens"]] == [ReturnToken]
            pointers.append(batch[key].data_ptr())
            release_batch(batch)
    assert len(set(pointers)) == 1  # each batch was written into the memory the one before gave back


def test_main_process_pool_keeps_nothing_that_is_not_given_back():
    pool = ProcessBuffers(slots=2)
    a, token_a = pool.take((4, 3), torch.float32)
    b, _ = pool.take((4, 3), torch.float32)
    assert not a.is_shared() and a.data_ptr() != b.data_ptr()
    dropped = weakref.ref(b)
    del b, _
    gc.collect()
    assert dropped() is None  # a batch dropped unreleased is freed: the pool held no reference to it
    token_a.release()
    token_a.release()  # a second release gives nothing back twice
    assert len(pool.free) == 1
    again, _ = pool.take((4, 3), torch.float32)
    assert again.data_ptr() == a.data_ptr() and not pool.free
    other, _ = pool.take((2, 2), torch.uint8)
    assert other.shape == (2, 2) and other.dtype == torch.uint8
    for tensor in (torch.empty(1), torch.empty(2), torch.empty(3)):
        pool.give_back(tensor)
    assert [t.numel() for t in pool.free] == [2, 3]  # at most `slots` released tensors are kept

"""Stopping on a non-finite loss or gradient without making the host wait for every step.

Reading a loss (``.item()``) blocks the host until the accelerator has finished the step, so the host can no longer
queue the next one ahead. :class:`NonFiniteGuard` keeps the check on the device instead:

* every step it records, in a device tensor, whether the global loss or the gradient norm is not finite, or
  whether the update left a parameter non-finite (a finite loss and gradient with ``lr=inf``; one fused max-abs over
  the parameters, still on the device) (the
  first such step's problem stays recorded, and every step from it on is counted as skipped);
* from that step on, each step is undone on the device: the parameters, the optimiser's state tensors and the
  batch-norm running statistics are put back to what they were before it (``torch.where`` on the flag), so the
  model stays at the last good state however many steps pass before the host looks;
* the host reads the flag (one sync) only where it needs numbers anyway: logging, evaluation, checkpoints and epoch
  ends (:meth:`NonFiniteGuard.read`); then it rewinds its own counters by the skipped steps
  (:meth:`NonFiniteGuard.rewind_host_state`: the optimiser's step counts, the learning-rate schedule) and can save
  the last good state.

All processes see the same flag: the loss is reduced over processes and the gradients are all-reduced.

Only what a step can change is copied and put back: the parameters that train (a frozen image tower's, which no
update touches, are left alone; copying a frozen DINOv2-giant every step would cost 4 GB of memory traffic) and the
buffers of modules in training mode (a frozen tower stays in eval mode, so its batch-norm statistics do not move).
"""

from __future__ import annotations

from typing import Iterable

import torch

PROBLEMS = {1: "loss", 2: "gradient", 3: "weights"}


class NonFiniteGuard:
    """Undo, on the device, every update from the first non-finite loss or gradient on (see the module docstring).

    Args:
        model: the (unwrapped) model whose parameters and buffers are guarded.
        optimizer: its optimiser (AdamW: ``step`` counters are rewound on the host, the other state tensors are
            restored on the device; a state the skipped step created is reset to zeros, as AdamW creates it).
        device: where the flag lives (the model's device).
    """

    def __init__(self, model: torch.nn.Module, optimizer, device: torch.device | str):
        self.model, self.optimizer = model, optimizer
        # (first problem: 0 none / 1 loss / 2 gradient, number of steps skipped since it)
        self._record = torch.zeros(2, dtype=torch.int64, device=device)

    # ------------------------------------------------------------------ device side, every step
    def _parameters(self) -> list[torch.Tensor]:
        """The parameters a step can change: those that train."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def _buffers(self) -> list[torch.Tensor]:
        """The buffers a forward pass can change: those of modules in training mode."""
        return [b for m in self.model.modules() if m.training for b in m.buffers(recurse=False)]

    def snapshot_buffers(self) -> list[torch.Tensor]:
        """Copies of the buffers of the modules in training mode (the batch-norm running statistics), taken
        before the forward pass."""
        return [t.detach().clone() for t in self._buffers()]

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Note whether this step's global ``loss`` or ``grad_norm`` (None: not checked) is non-finite."""
        code = torch.where(torch.isfinite(loss.detach()), 0, 1)
        if grad_norm is not None:
            code = torch.where((code == 0) & ~torch.isfinite(grad_norm.detach()), 2, code)
        first = torch.where(self._record[0] == 0, code.to(self._record.device), self._record[0])
        self._record = torch.stack([first, self._record[1] + (first != 0)])

    def _record_weights(self) -> None:
        """After ``optimizer.step()``: note (on the device) whether a parameter is now non-finite. The largest
        absolute value of each parameter (one fused pass; NaN propagates, and unlike the 2-norm it cannot overflow
        on large finite weights) is finite exactly when the parameter is."""
        params = [p.detach() for p in self._parameters() if p.is_floating_point()]
        if not params:
            return
        total = torch.stack(torch._foreach_norm(params, float("inf"))).isfinite().all()
        bad = (self._record[0] == 0) & ~total.to(self._record.device)
        self._record = torch.stack([torch.where(bad, 3, self._record[0]), self._record[1] + bad])

    def _optimizer_tensors(self) -> Iterable[tuple[tuple[int, str], torch.Tensor]]:
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":  # step counts: rewind_host_state
                    yield (id(param), key), value

    def snapshot_state(self) -> tuple[list[torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
        """Copies of the parameters and the optimiser's state tensors, taken before ``optimizer.step()``."""
        params = [p.detach().clone() for p in self._parameters()]
        return params, {key: value.detach().clone() for key, value in self._optimizer_tensors()}

    def undo_if_skipped(self, buffers: list[torch.Tensor], state) -> None:
        """After ``optimizer.step()``: from the first bad step on, put the snapshots back (on the device)."""
        self._record_weights()
        skip = self._record[0] != 0
        params, optimizer_state = state
        with torch.no_grad():
            for current, saved in zip(self._buffers() + self._parameters(), buffers + params, strict=True):
                torch.where(skip, saved, current, out=current)
            for key, current in self._optimizer_tensors():
                saved = optimizer_state.get(key)
                if saved is None:  # created by this step
                    current.masked_fill_(skip, 0)
                else:
                    torch.where(skip, saved, current, out=current)

    # ------------------------------------------------------------------ host side, at check steps
    def read(self) -> tuple[str | None, int]:
        """``(problem, skipped)``: ``"loss"`` / ``"gradient"`` (or None) of the first bad step and how many steps
        have been skipped since (it included). One host sync."""
        problem, skipped = self._record.tolist()
        return PROBLEMS.get(problem), skipped

    def rewind_host_state(self, skipped: int, scheduler) -> None:
        """Take the optimiser's step counts and the learning-rate schedule back by ``skipped`` steps."""
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] -= skipped
        scheduler.last_epoch -= skipped + 1
        scheduler._step_count -= skipped + 1  # torch's count of step() calls, saved with the schedule
        scheduler.step()  # recomputes the learning rates of the rewound position


__all__ = ["NonFiniteGuard"]

"""Everything that talks to ``torch.distributed``: feature gathering for the losses and global batch norm.

* :func:`gather_features` - the features of every process concatenated *with gradients*, so a loss can compare its
  own rows with the global batch (open_clip's "local loss"); the one place the losses reach other processes.
* :class:`GlobalBatchNorm` / :func:`convert_sync_batchnorm` - batch-norm statistics over the global batch
  (CUDA: ``nn.SyncBatchNorm``; any backend, CPU/gloo included: :class:`GlobalBatchNorm`).

Outside a multi-process run every function here is the identity (or plain batch norm).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over processes.

    ``torch.distributed.nn.all_gather`` needs reduce-scatter or all-to-all, which not every backend has;
    an all-reduce followed by taking the local slice works on gloo, NCCL and MPI alike.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``features`` (n, d) of all processes, keeping gradients to the local rows.

    Returns the global ``(world_size * n, d)`` tensor and the index of this process's first row in it.
    Outside a multi-process run this is the identity with offset 0. Every process must hold the same
    number of rows: ``cloome train`` guarantees it by construction (global batches of whole molecule-unique
    batches cut into equal per-process slices, incomplete batches dropped), and the rows are not compared here,
    because reading the counts back would make the host wait for the device at every step.
    """
    if not is_distributed():
        return features, 0
    return _AllGatherWithGrad.apply(features), dist.get_rank() * features.shape[0]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the batch of every process (any backend, CPU included).

    Same parameters and buffers as ``nn.BatchNorm{1,2}d`` (state dicts are interchangeable). Outside a
    multi-process run, or in eval mode, it is exactly ``F.batch_norm``.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        channels = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / channels, dtype=torch.float32, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by a cross-process one: ``nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` else."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(child.buffers(), torch.empty(0)).device)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm", "gather_features", "is_distributed"]

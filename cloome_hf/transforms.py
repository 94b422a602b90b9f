"""Training-time augmentation for CLOOME: batched torch ops on 8-bit Cell Painting sites.

Inference uses `CloomeImageProcessor` (deterministic centre crop + normalisation); the data pipeline uses
`CloomeTrainTransform` while training. In training mode, for every image independently:

1. random crop to `crop_size` (integer window, exact pixels), horizontal and vertical flips (each with
   probability 1/2) and a rotation by a multiple of 90 degrees (k = 0..3 for square crops; 0 or 180 degrees for
   non-square ones, so that every image of the batch keeps its shape) -- all fused into one uint8 gather;
2. random resized crop: a box covering a fraction `random_resized_crop_scale` of the area, with aspect ratio in
   `random_resized_crop_ratio` (log-uniform), resampled bilinearly to `output_size` (default: back to the same
   size; `output_size=(320, 320)` without `crop_size` is the bioactivity recipe's random-resized crop of the whole
   520 x 696 site to 320 x 320, torchvision `RandomResizedCrop` semantics). Applying it after the
   flips/turns gives the same distribution as before them, because the box law is mirror-symmetric and, for a
   ratio range symmetric in log space such as the default (3/4, 4/3), rotation-symmetric;
3. normalisation `(x - image_mean) / image_std` per channel in float32 (the default, with mean = std = the
   published channel means, is CLOOME's `x / m - 1`).

In eval mode (`transform.eval()`) only a centre crop to `crop_size` (then to `output_size`, as the published
code evaluated its random-resized-crop models) and the normalisation are applied, which matches
`CloomeImageProcessor` with that crop on the same 8-bit input. All randomness comes from a `torch.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .channels import CLOOME_CHANNEL_MEAN


class CloomeTrainTransform(nn.Module):
    """Batched CLOOME augmentation, uint8 (N, C, H, W) or (C, H, W) -> float32 pixel values.

    Args:
        crop_size: (height, width) of the output, or None to keep the input size.
        random_resized_crop_scale: (min, max) area fraction of the random resized crop, or None to disable it.
        random_resized_crop_ratio: (min, max) aspect ratio (width / height) of that crop box, sampled log-uniformly.
        output_size: (height, width) the random resized crop is resampled to (default: its input size).
        flips: random horizontal and vertical flips.
        rot90: random rotations by multiples of 90 degrees.
        image_mean, image_std: per-channel normalisation (default: the published CLOOME channel means).
        seed: seed of the transform's own generator (used when a call passes no generator).
    """

    def __init__(
        self,
        crop_size: Sequence[int] | None = None,
        random_resized_crop_scale: Sequence[float] | None = (0.9, 1.0),
        random_resized_crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        output_size: Sequence[int] | None = None,
        flips: bool = True,
        rot90: bool = True,
        image_mean: Sequence[float] = CLOOME_CHANNEL_MEAN,
        image_std: Sequence[float] = CLOOME_CHANNEL_MEAN,
        seed: int | None = None,
    ):
        super().__init__()
        if crop_size is not None:
            crop_size = (int(crop_size[0]), int(crop_size[1]))
            if min(crop_size) <= 0:
                raise ValueError(f"crop_size must be positive, got {crop_size}")
        if output_size is not None:
            output_size = (int(output_size[0]), int(output_size[1]))
            if min(output_size) <= 0:
                raise ValueError(f"output_size must be positive, got {output_size}")
            if random_resized_crop_scale is None:
                raise ValueError("output_size is the size of the random resized crop: set random_resized_crop_scale")
        if random_resized_crop_scale is not None:
            low, high = random_resized_crop_scale
            if not 0 < low <= high <= 1:
                raise ValueError(
                    f"random_resized_crop_scale must satisfy 0 < min <= max <= 1, got {random_resized_crop_scale}"
                )
            random_resized_crop_scale = (float(low), float(high))
        low, high = random_resized_crop_ratio
        if not 0 < low <= high:
            raise ValueError(f"random_resized_crop_ratio must satisfy 0 < min <= max, got {random_resized_crop_ratio}")
        if len(image_mean) != len(image_std) or any(s == 0 for s in image_std):
            raise ValueError(
                f"image_mean/image_std must have equal length and no zero std, got {image_mean}, {image_std}"
            )
        self.crop_size = crop_size
        self.random_resized_crop_scale = random_resized_crop_scale
        self.random_resized_crop_ratio = (float(low), float(high))
        self.output_size = output_size
        self.flips = bool(flips)
        self.rot90 = bool(rot90)
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            buffer = torch.tensor(value, dtype=torch.float32).view(-1, 1, 1)
            self.register_buffer(name, buffer, persistent=False)  # follows .to(device), not saved
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def extra_repr(self) -> str:
        return (f"crop_size={self.crop_size}, output_size={self.output_size}, "
                f"random_resized_crop_scale={self.random_resized_crop_scale}, "
                f"random_resized_crop_ratio={self.random_resized_crop_ratio}, flips={self.flips}, rot90={self.rot90}")

    # ------------------------------------------------------------------ steps
    def _dihedral_grids(self, height: int, width: int) -> torch.Tensor:
        """(num_ops, 2, height, width) source (row, col) of every output pixel, one map per flip/rotation combo."""
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        base = torch.stack([rows, cols])
        quarter_turns = (0, 1, 2, 3) if height == width else (0, 2)  # odd turns would change a non-square shape
        grids = []
        for flip_w in (False, True) if self.flips else (False,):
            for flip_h in (False, True) if self.flips else (False,):
                for k in quarter_turns if self.rot90 else (0,):
                    grid = base.flip(-1) if flip_w else base
                    grid = grid.flip(-2) if flip_h else grid
                    grids.append(torch.rot90(grid, k, dims=(-2, -1)))
        return torch.stack(grids)

    def _crop_flip_rotate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random window + flips + 90-degree turns, fused into one exact gather on the (uint8) input."""
        n, channels, height, width = images.shape
        ch, cw = self.crop_size if self.crop_size is not None else (height, width)
        if ch > height or cw > width:
            raise ValueError(f"crop_size {ch}x{cw} is larger than the images {height}x{width}")
        tops = torch.randint(0, height - ch + 1, (n,), generator=generator)
        lefts = torch.randint(0, width - cw + 1, (n,), generator=generator)
        grids = self._dihedral_grids(ch, cw)
        ops = torch.randint(0, len(grids), (n,), generator=generator)
        source = grids[ops]  # (N, 2, ch, cw) positions inside each image's window
        rows = source[:, 0] + tops.view(n, 1, 1)
        cols = source[:, 1] + lefts.view(n, 1, 1)
        flat = (rows * width + cols).view(n, 1, ch * cw).to(images.device)
        # One gather over the flattened frame; every image gets its own window and orientation.
        picked = images.reshape(n, channels, height * width).gather(2, flat.expand(n, channels, ch * cw))
        return picked.view(n, channels, ch, cw)

    @staticmethod
    def _center_crop(images: torch.Tensor, crop_size: tuple[int, int] | None) -> torch.Tensor:
        height, width = images.shape[-2:]
        if crop_size is None:
            return images
        ch, cw = crop_size
        if ch > height or cw > width:
            raise ValueError(f"crop_size {ch}x{cw} is larger than the images {height}x{width}")
        top, left = (height - ch) // 2, (width - cw) // 2
        return images[:, :, top : top + ch, left : left + cw]

    def _random_resized_crop(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, height, width = images.shape
        area = torch.empty(n).uniform_(*self.random_resized_crop_scale, generator=generator)
        log_ratio = torch.empty(n).uniform_(*(math.log(r) for r in self.random_resized_crop_ratio), generator=generator)
        ratio = torch.exp(log_ratio)
        # Box size as fractions of the image; clamp so that extreme ratios still fit inside.
        box_w = torch.sqrt(area * ratio * height / width).clamp(max=1.0)
        box_h = (area / box_w).clamp(max=1.0)
        center_x = box_w / 2 + torch.rand(n, generator=generator) * (1 - box_w)
        center_y = box_h / 2 + torch.rand(n, generator=generator) * (1 - box_h)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = box_w, 2 * center_x - 1
        theta[:, 1, 1], theta[:, 1, 2] = box_h, 2 * center_y - 1
        out_h, out_w = self.output_size if self.output_size is not None else (height, width)
        grid = F.affine_grid(theta.to(images.device), [n, images.shape[1], out_h, out_w], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # ------------------------------------------------------------------ call
    def forward(self, images: torch.Tensor, seeds: Sequence[int] | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment (training mode) or centre-crop (eval mode) and normalise.

        Args:
            images: (N, C, H, W) or (C, H, W), uint8 (or any real dtype, used as is).
            seeds: one seed per image (training mode): image i's crop, flips and turns are drawn from a generator
                seeded with ``seeds[i]``, so its pixels depend on that seed alone, not on the batch it is in, the
                worker or the process.
            generator: CPU `torch.Generator` for the draws of the whole batch when no ``seeds`` are given
                (default: the transform's own).

        Returns:
            float32 tensor of the input's rank: (N, C, crop_h, crop_w) or (C, crop_h, crop_w).
        """
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        single = images.dim() == 3
        if single:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) or (C, H, W) images, got shape {tuple(images.shape)}")
        if images.shape[1] != self.image_mean.shape[0]:
            raise ValueError(
                f"images have {images.shape[1]} channels, the normalisation has {self.image_mean.shape[0]}"
            )
        if seeds is not None and len(seeds) != images.shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for {images.shape[0]} images")
        if not self.training:
            images = self._center_crop(self._center_crop(images, self.crop_size), self.output_size).to(torch.float32)
        elif seeds is not None:
            images = torch.cat([self._augment(images[i:i + 1], torch.Generator().manual_seed(int(seed)))
                                for i, seed in enumerate(seeds)])
        else:
            images = self._augment(images, generator if generator is not None else self.generator)
        images = (images - self.image_mean.to(images.device)) / self.image_std.to(images.device)
        return images[0] if single else images

    def _augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # Flips/turns commute in distribution with the resized crop (its box law is symmetric), so they are
        # fused with the random window into one exact uint8 gather before the float resampling.
        images = self._crop_flip_rotate(images, generator).to(torch.float32)
        if self.random_resized_crop_scale is not None:
            images = self._random_resized_crop(images, generator)
        return images


__all__ = ["CloomeTrainTransform"]

"""The one owner of "nothing non-finite, nothing of the wrong dtype, is written or loaded as good state".

Checkpoint and model writers, the model loaders, the embedding-store writer and the search index call these; each
names the first bad tensor (by its state-dict name) or row (by its key where the caller has one) so the error says
where to look.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch


def first_nonfinite_tensor(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating tensor with a NaN or infinite value (None: all finite). One host sync per
    tensor: meant for save and load time, not for every training step (see ``train.guard``)."""
    for name, tensor in named:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def require_finite_tensors(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise ``ValueError`` naming the first non-finite tensor of ``what`` (e.g. "the checkpoint to write")."""
    bad = first_nonfinite_tensor(named)
    if bad is not None:
        raise ValueError(f"{what} has non-finite values (NaN or inf) in tensor {bad!r}; refusing it")


def require_float_dtypes(dtypes: Mapping[str, object], what: str, expected: Mapping[str, torch.dtype] | None = None
                         ) -> None:
    """Raise ``ValueError`` naming the first tensor whose dtype is not a floating type, where the model's own tensor
    of that name (``expected``; None: every tensor) is a floating one. ``dtypes`` maps names to torch dtypes or
    safetensors dtype strings ("F32", "I64", ...)."""
    for name, dtype in dtypes.items():
        if expected is not None and (name not in expected or not expected[name].is_floating_point):
            continue  # integer buffers (e.g. batch-norm step counts) stay integers
        floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else str(dtype).upper() in (
            "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")
        if not floating:
            raise ValueError(f"{what}: tensor {name!r} has dtype {dtype}, not a floating type like the model's "
                             "weight of that name; refusing to cast it")


def first_nonfinite_row(values: np.ndarray) -> int | None:
    """Index of the first row of a (N, D) array with a NaN or infinite value (None: all finite)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return None
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    return None if finite.all() else int(np.argmin(finite))


def require_finite_rows(values: np.ndarray, what: str, keys: Sequence | None = None) -> None:
    """Raise ``ValueError`` naming the first non-finite row of ``values`` (by ``keys[row]`` where given)."""
    row = first_nonfinite_row(values)
    if row is not None:
        key = keys[row] if keys is not None and len(keys) > row else None
        key = key.as_py() if hasattr(key, "as_py") else key  # a pyarrow scalar
        label = f"row {row}" + ("" if key is None else f" ({key!r})")
        raise ValueError(f"{what} has non-finite values (NaN or inf) at {label}; refusing it")


__all__ = ["first_nonfinite_tensor", "first_nonfinite_row", "require_finite_rows", "require_finite_tensors",
           "require_float_dtypes"]

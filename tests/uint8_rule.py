"""The one test reference of CLOOME's 16 -> 8 bit rule, written from the formula (README, "Processing", step 1),
sharing no code with ``cloome_hf.image_processing_cloome.rescale_to_uint8`` (a lookup table): n = round(H*W *
fraction) clamped to [1, H*W] (n = 0 -> the maximum, n > H*W -> the minimum), T = the n-th largest pixel by a
full sort, out = uint8(min(x * (scale / T), 255)) in float64, truncated; a blank channel (T = 0) gives zeros."""

import numpy as np


def reference_uint8(x, fraction: float = 2.8e-5, scale: float = 256.0) -> np.ndarray:
    x = np.asarray(x)
    n = min(max(int(round(x.size * fraction)), 1), x.size)
    threshold = float(np.sort(x.ravel())[::-1][n - 1])
    if threshold <= 0:
        return np.zeros(x.shape, np.uint8)
    out = np.minimum(x.astype(np.float64) * (scale / threshold), 255)
    return np.clip(out, 0, None).astype(np.uint8)

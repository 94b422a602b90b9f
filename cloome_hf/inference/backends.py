"""Image-encoder backends of ``cloome embed --backend``: the torch model, ONNX Runtime, and int8 ONNX Runtime.

    torch      the model itself (``get_image_features``, optionally under bf16 autocast: ``--bf16``)
    onnx       the image tower exported with ``torch.onnx`` and run by ONNX Runtime's CPU provider (fp32)
    int8       the image tower's ResNet trunk statically quantised by ``torch.ao`` (FX graph mode, the oneDNN
               engine where torch has it, else ``x86`` or ``qnnpack``: batch norm folded, per-channel int8 weights, uint8
               activations with MinMax ranges), calibrated on a sample of the dataset's own sites; the head pool
               and projection stay float32. The fastest of the three on the CPUs measured
               (``benchmarks/bench_backends.py``); only for the ``cloome_resnet50`` tower
    onnx-int8  the ONNX graph statically quantised by ``onnxruntime.quantization`` (QDQ, per-channel int8
               weights, uint8 activations with MinMax ranges), calibrated likewise; any exportable tower

Every backend but ``torch`` is checked against the fp32 torch model on a held-out sample of the dataset's sites
(disjoint from the calibration sample) before anything is written: each site's embedding must have cosine
similarity >= :data:`COSINE_BOUND` with its fp32 embedding, and the top-:data:`TOP_K` site-to-site neighbours of
the sample must overlap the fp32 ones by >= :data:`OVERLAP_BOUND` on average. A backend that misses a bound
raises :class:`BackendBoundError`, saying by how much; ``cloome embed`` then writes no store. Molecules are always
embedded by the torch model (their MLP is a small share of the time).

An encoder is a callable ``(N, C, H, W) float32 pixel values -> (N, projection_dim) float32 L2-normalised CPU
tensor``, the contract of :func:`cloome_hf.inference.encode.embed_pixel_values`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .encode import embed_pixel_values

BACKENDS = ("torch", "onnx", "int8", "onnx-int8")
#: Per-site cosine similarity to the fp32 embedding a backend must reach on the held-out sample.
COSINE_BOUND = 0.999
#: Mean overlap of the top-``TOP_K`` site-to-site neighbours with the fp32 ones a backend must reach.
OVERLAP_BOUND = 0.95
TOP_K = 10

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]


class BackendBoundError(ValueError):
    """A backend's embeddings are too far from the fp32 model's on the held-out sample."""


class _ImageFeatures(nn.Module):
    """The exported graph: pixel values -> unnormalised image features (``pooler_output``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


def export_image_onnx(model, example: torch.Tensor, path: str) -> str:
    """The model's image tower as an ONNX graph at ``path`` (batch dimension dynamic; fp32, on the CPU)."""
    module = _ImageFeatures(model).eval().to("cpu", torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (example[:1].to("cpu", torch.float32),), path, input_names=["pixel_values"],
                          output_names=["image_features"], opset_version=17, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_features": {0: "batch"}})
    return path


class OnnxImageEncoder:
    """An ONNX Runtime session of an exported image tower, as an :data:`ImageEncoder`."""

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())
        (features,) = self.session.run(["image_features"], {"pixel_values": array})
        return F.normalize(torch.from_numpy(features).float(), dim=-1)


class _Calibration:
    """``onnxruntime.quantization.CalibrationDataReader`` over batches of calibration pixel values; with
    ``CalibStridedMinMax`` the calibrator folds each range of batches into its min/max before reading the next,
    so calibration memory is one batch's activations, not the whole sample's."""

    def __init__(self, pixel_values: torch.Tensor, batch_size: int):
        self.batches = [{"pixel_values": np.ascontiguousarray(pixel_values[i:i + batch_size].numpy())}
                        for i in range(0, len(pixel_values), batch_size)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._stop = start_index, end_index

    def get_next(self):
        if self._next >= self._stop:
            return None
        self._next += 1
        return self.batches[self._next - 1]


def quantize_int8(fp32_path: str, int8_path: str, calibration: torch.Tensor, batch_size: int = 4) -> str:
    """Static int8 quantisation of an exported image tower, calibrated on ``calibration`` pixel values."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration):
        raise ValueError("int8 quantisation needs calibration sites, got none")
    prepared = fp32_path[:-5] + ".prep.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    quantize_static(prepared, int8_path, _Calibration(calibration, batch_size), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibStridedMinMax": 1})
    return int8_path


def _quantized_engine() -> str:
    """oneDNN on x86 (VNNI / AMX int8 kernels, full 8-bit activation range), else the best torch has."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("onednn", "x86", "qnnpack") if e in engines), engines[-1])


class TorchInt8ImageEncoder:
    """The ``cloome_resnet50`` image tower with its trunk (stem and four stages) statically quantised to int8 by
    ``torch.ao`` FX graph mode, calibrated on ``calibration`` pixel values, as an :data:`ImageEncoder`. The head
    pool and the projection run in float32 on the dequantised final map."""

    def __init__(self, model, calibration: torch.Tensor, batch_size: int = 4):
        from torch.ao.quantization import QConfig, QConfigMapping, default_per_channel_weight_observer
        from torch.ao.quantization.observer import MinMaxObserver
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        from ..vision_tower_resnet import CloomeResNet, cloome_head_pool

        tower = model.vision_model
        if type(tower) is not CloomeResNet:
            raise ValueError(f"backend 'int8' quantises the cloome_resnet50 tower; this model's image tower is "
                             f"{type(tower).__name__}: use --backend onnx-int8")
        if not len(calibration):
            raise ValueError("int8 quantisation needs calibration sites, got none")
        self.engine, self.head_pool_size, self._pool = _quantized_engine(), tower.head_pool_size, cloome_head_pool
        self.projection = copy.deepcopy(model.visual_projection).to("cpu", torch.float32).eval()
        parts = [tower.conv1, tower.bn1, tower.relu, tower.maxpool, tower.layer1, tower.layer2, tower.layer3,
                 tower.layer4]
        trunk = copy.deepcopy(nn.Sequential(*parts)).to("cpu", torch.float32).eval()
        # uint8 activations; fbgemm's kernels (behind "x86") need 7 bits to keep 16-bit sums from saturating
        activation = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=self.engine in ("x86", "fbgemm"))
        mapping = QConfigMapping().set_global(QConfig(activation=activation,
                                                      weight=default_per_channel_weight_observer))
        calibration = calibration.to("cpu", torch.float32)
        with self._engine(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's notice that it moves to torchao
            prepared = prepare_fx(trunk, mapping, (calibration[:1],))
            for i in range(0, len(calibration), batch_size):
                prepared(calibration[i:i + batch_size])
            self.trunk = convert_fx(prepared)

    @contextlib.contextmanager
    def _engine(self):
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            yield
        finally:
            torch.backends.quantized.engine = before

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with self._engine(), torch.no_grad():
            final_map = self.trunk(pixel_values.detach().to("cpu", torch.float32))
            features = self.projection(self._pool(final_map, self.head_pool_size))
        return F.normalize(features.float(), dim=-1)


class TorchImageEncoder:
    """The model itself (optionally under autocast), as an :data:`ImageEncoder`."""

    def __init__(self, model, autocast_dtype: torch.dtype | None = None):
        self.model, self.autocast_dtype = model, autocast_dtype

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return embed_pixel_values(self.model, pixel_values, self.autocast_dtype)


def build_image_encoder(backend: str, model, *, calibration: torch.Tensor | None = None, workdir: str,
                        autocast_dtype: torch.dtype | None = None) -> ImageEncoder:
    """The :data:`ImageEncoder` of ``backend`` (files go to ``workdir``); ``calibration``: int8's pixel values."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return TorchImageEncoder(model, autocast_dtype)
    if calibration is None or not len(calibration):
        raise ValueError(f"backend {backend!r} needs sample sites (to export and calibrate on), got none")
    if backend == "int8":
        return TorchInt8ImageEncoder(model, calibration)
    fp32_path = export_image_onnx(model, calibration, os.path.join(workdir, "image_encoder.onnx"))
    if backend == "onnx":
        return OnnxImageEncoder(fp32_path)
    return OnnxImageEncoder(quantize_int8(fp32_path, os.path.join(workdir, "image_encoder.int8.onnx"), calibration))


@dataclass
class BackendCheck:
    """A backend against the fp32 model on the held-out sample."""

    backend: str
    num_sites: int
    min_cosine: float
    worst_site: str
    mean_cosine: float
    top_k_overlap: float
    top_k: int

    @property
    def cosine_ok(self) -> bool:
        return self.min_cosine >= COSINE_BOUND

    @property
    def overlap_ok(self) -> bool:
        return self.top_k_overlap >= OVERLAP_BOUND

    def to_dict(self) -> dict:
        return {**asdict(self), "cosine_bound": COSINE_BOUND, "overlap_bound": OVERLAP_BOUND,
                "passed": self.cosine_ok and self.overlap_ok}

    def require_within_bounds(self) -> None:
        """Raise :class:`BackendBoundError` naming each missed bound and by how much."""
        missed = []
        if not self.cosine_ok:
            missed.append(f"cosine similarity to fp32 is {self.min_cosine:.6f} on site {self.worst_site!r}, "
                          f"{COSINE_BOUND - self.min_cosine:.6f} below the bound {COSINE_BOUND}")
        if not self.overlap_ok:
            missed.append(f"top-{self.top_k} retrieval overlap with fp32 is {self.top_k_overlap:.4f}, "
                          f"{OVERLAP_BOUND - self.top_k_overlap:.4f} below the bound {OVERLAP_BOUND}")
        if missed:
            raise BackendBoundError(f"backend {self.backend!r} misses its bounds on {self.num_sites} held-out "
                                    f"sites: " + "; ".join(missed) + ", so no store was written")


def top_k_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = TOP_K) -> float:
    """Mean share of each site's ``k`` nearest other sites (cosine) under ``reference`` embeddings that are also
    among its ``k`` nearest under ``candidate`` ones; ``k`` is capped at the number of other sites."""
    k = min(k, len(reference) - 1)
    if k < 1:
        raise ValueError(f"the top-k overlap needs at least 2 sites, got {len(reference)}")

    def neighbours(e: np.ndarray) -> np.ndarray:
        similarity = e @ e.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    ref, cand = neighbours(reference), neighbours(candidate)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, cand)]))


def check_backend(backend: str, encoder: ImageEncoder, model, held_out: torch.Tensor, keys: Sequence[str],
                  batch_size: int = 8) -> BackendCheck:
    """``encoder`` against the fp32 torch model on ``held_out`` pixel values (their sample keys: ``keys``)."""
    if len(held_out) != len(keys):
        raise ValueError(f"{len(held_out)} held-out sites but {len(keys)} keys")
    batches = range(0, len(held_out), batch_size)
    reference = torch.cat([embed_pixel_values(model, held_out[i:i + batch_size]) for i in batches]).double()
    candidate = torch.cat([encoder(held_out[i:i + batch_size]) for i in batches]).double()
    if not torch.isfinite(candidate).all():
        bad = int((~torch.isfinite(candidate)).any(1).nonzero()[0, 0])
        raise BackendBoundError(f"backend {backend!r} gave a non-finite embedding for site {keys[bad]!r}")
    cosine = F.cosine_similarity(reference, candidate, dim=-1)
    worst = int(cosine.argmin())
    return BackendCheck(backend, len(keys), float(cosine.min()), str(keys[worst]), float(cosine.mean()),
                        top_k_overlap(reference.numpy(), candidate.numpy()), min(TOP_K, len(keys) - 1))


def sample_rows(num_rows: int, calibration: int, held_out: int) -> tuple[list[int], list[int]]:
    """Disjoint calibration and held-out rows, spread evenly over the dataset (alternating when both are asked
    for); ``ValueError`` when fewer than 2 sites are left for the held-out check."""
    wanted = min(calibration + held_out, num_rows)
    rows = np.unique(np.linspace(0, num_rows - 1, wanted).round().astype(int)).tolist() if wanted else []
    held = rows[1::2][:held_out] if calibration else rows[:held_out]
    taken = set(held)
    cal = [r for r in rows if r not in taken][:calibration]
    if len(held) < 2:
        raise ValueError(f"the backend check needs at least 2 held-out sites; the dataset has {num_rows}")
    return cal, held


def sample_pixel_values(sites, processor, rows: Sequence[int], batch_size: int = 16) -> tuple[torch.Tensor, list[str]]:
    """The processor's pixel values and the sample keys of ``rows`` of a dataset (through the one input path)."""
    from ..data import build_dataloader

    part = sites.select(list(rows))
    loader = build_dataloader(part, batch_size=batch_size, train=False, image_processor=processor.image_processor)
    batches = list(loader)
    return torch.cat([b["pixel_values"] for b in batches]), [k for b in batches for k in b["sample_key"]]


def prepare_backend(backend: str, model, processor, sites, *, calibration_sites: int = 32, check_sites: int = 32,
                    autocast_dtype: torch.dtype | None = None, workdir: str | None = None,
                    log=print) -> tuple[ImageEncoder, dict | None]:
    """The encoder of ``backend`` for embedding ``sites`` (a ``datasets.Dataset``), checked against fp32 on
    held-out sites (``BackendBoundError`` if it misses a bound); returns it and the check's record (``None`` for
    ``torch``)."""
    if backend == "torch":
        return build_image_encoder("torch", model, workdir="", autocast_dtype=autocast_dtype), None
    calibrated = backend in ("int8", "onnx-int8")
    if calibrated and calibration_sites < 1:
        raise ValueError(f"backend {backend} is calibrated on the dataset's sites: calibration_sites must be >= 1, got "
                         f"{calibration_sites}")
    calibration_rows, held_rows = sample_rows(len(sites), calibration_sites if calibrated else 0,
                                              check_sites)
    held_out, keys = sample_pixel_values(sites, processor, held_rows)
    # onnx calibrates nothing: a held-out site is only the export's example input
    calibration = sample_pixel_values(sites, processor, calibration_rows)[0] if calibration_rows else held_out[:1]
    workdir = workdir or tempfile.mkdtemp(prefix="cloome-backend-")
    encoder = build_image_encoder(backend, model.to("cpu"), calibration=calibration, workdir=workdir)
    check = check_backend(backend, encoder, model, held_out, keys)
    log(f"backend {backend}: on {check.num_sites} held-out sites, cosine to fp32 min {check.min_cosine:.6f} "
        f"(bound {COSINE_BOUND}), top-{check.top_k} overlap {check.top_k_overlap:.4f} (bound {OVERLAP_BOUND})")
    check.require_within_bounds()
    record = {**check.to_dict(), "calibration_sites": len(calibration_rows) if calibrated else 0}
    return encoder, record


__all__ = ["BACKENDS", "COSINE_BOUND", "OVERLAP_BOUND", "TOP_K", "BackendBoundError", "BackendCheck",
           "ImageEncoder", "OnnxImageEncoder", "TorchImageEncoder", "TorchInt8ImageEncoder", "build_image_encoder", "check_backend",
           "export_image_onnx", "prepare_backend", "quantize_int8", "sample_pixel_values", "sample_rows",
           "top_k_overlap"]

"""CPU embedding throughput of ``cloome embed``'s backends against the upstream ``encode_image`` steps, one run.

Every row embeds the same real-size sites (5 x 520 x 696, the bundled real site rolled, flipped and speckled as in
:mod:`bench_data`) with the same weights, the published ResNet-50 image tower, randomly initialised once:

* ``upstream``: the upstream CLOOME inference steps, re-implemented from their description: per site ``np.load``
  of the ``.npz``, ``float32``, ``to_tensor``, ``Normalize(mean, mean)``, ``default_collate``, then
  ``encode_image``: the anti-aliased ResNet-50 (batch norm as its own layer, ``AvgPool2d(7, 1)`` head, ``fc``) in
  float32, contiguous, and ``F.normalize``. Its weights are the source; ours come from them through
  :func:`cloome_hf.publish.convert.convert_state_dict`, as ``cloome convert`` makes them;
* ``torch fp32``: ``cloome embed`` (``--backend torch``): ``get_image_features`` in float32;
* ``torch bf16 + channels_last``: the best torch CPU path before the ONNX backends (``--bf16``, channels-last
  model and input);
* ``onnx``: ``--backend onnx`` (:class:`cloome_hf.inference.backends.OnnxImageEncoder`, ONNX Runtime CPU);
* ``int8``: ``--backend int8`` (the ResNet trunk statically quantised by ``torch.ao``, oneDNN engine,
  calibrated on the sites);
* ``onnx-int8``: ``--backend onnx-int8`` (the ONNX graph statically quantised, QDQ, calibrated likewise);
* variants of the ONNX Runtime settings tried on top (``--variants``): graph optimisation level, spinning threads,
  QOperator int8 format, int8 activations, torch's ``x86`` quantised engine.

Each row is timed twice: the encoder alone on the prepared pixel values (``model``), and the whole path
(``whole``: the encoder plus the input path of that side, ``np.load`` ... ``default_collate`` for upstream,
``build_dataloader(train=False)`` over the Parquet store ``cloome prepare`` writes for ours; both measured in the
same run, one thread, best of ``--repeats`` rounds, each round timing every row once in turn). Every backend's embeddings are compared with the float32 torch ones
(minimum cosine over the sites), so a fast row that drifts shows it. Ratios are against ``upstream`` and against
``torch bf16 + channels_last`` in the same run. The machine may be shared: the load average is reported.

    python benchmarks/bench_backends.py --num_sites 16 --batch_size 8 --output bench_backends.json
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # what every cloome command sets (cloome_hf/runtime.py)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import make_sites  # noqa: E402
from bench_report import finish  # noqa: E402


# ------------------------------------------------------------------ the upstream encode_image
class UpstreamBottleneck(nn.Module):
    """Upstream's anti-aliased bottleneck: 1x1, 3x3 (stride 1), ``AvgPool2d(stride)``, 1x1; the shortcut pools
    before its 1x1 convolution."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, bias=False),
                                            nn.BatchNorm2d(planes * 4))
        self.shortcut_pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(self.shortcut_pool(x))
        return F.relu(out + identity)


class UpstreamVisual(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), channels: int = 5, projection_dim: int = 512):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)
        inplanes = 64
        for stage, blocks in enumerate(layers, start=1):
            planes = 64 * 2 ** (stage - 1)
            stride = 1 if stage == 1 else 2
            setattr(self, f"layer{stage}", nn.Sequential(*[
                UpstreamBottleneck(inplanes if b == 0 else planes * 4, planes, stride if b == 0 else 1)
                for b in range(blocks)]))
            inplanes = planes * 4
        self.head = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(2048, projection_dim)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.head(x)
        if x.shape[-2:] != (1, 1):
            x = x.mean(dim=(-2, -1), keepdim=True)
        return self.fc(torch.flatten(x, 1))


class UpstreamClip(nn.Module):
    """``visual`` and the molecule MLP ``transformer`` under upstream's names (the MLP only so that the state dict
    converts; it is not timed)."""

    def __init__(self, fingerprint_size: int = 1024, hidden: int = 1024, hidden_layers: int = 4):
        super().__init__()
        self.visual = UpstreamVisual()
        sizes = [fingerprint_size] + [hidden] * hidden_layers
        layers = [nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b)) for a, b in zip(sizes, sizes[1:])]
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(layers + [nn.Sequential(nn.Linear(hidden, 512))])
        self.logit_inv_tau = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def encode_image(self, image):
        return self.visual(image)


def upstream_model(seed: int = 0) -> UpstreamClip:
    """Upstream's model with random weights and batch-norm statistics that are not the identity (so folding
    them is real work), in eval mode."""
    torch.manual_seed(seed)
    model = UpstreamClip()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
    return model.eval()


def upstream_inputs(files: list[str]) -> torch.Tensor:
    """Upstream's per-site steps and collation: ``np.load``, float32, ``to_tensor``, ``Normalize``."""
    import torchvision.transforms as T
    from torchvision.transforms.functional import to_tensor

    from cloome_hf.channels import CLOOME_CHANNEL_MEAN

    normalize = T.Normalize(CLOOME_CHANNEL_MEAN, CLOOME_CHANNEL_MEAN)
    items = []
    for path in files:
        with np.load(path) as f:
            sample = f["sample"]
        items.append(normalize(to_tensor(sample.astype(np.float32))))
    return torch.utils.data.default_collate(items)


# ------------------------------------------------------------------ timing
def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitives, ORT arenas
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best_seconds(encoders: dict, pixels: torch.Tensor, batch_size: int, repeats: int) -> dict:
    """Seconds per pass over ``pixels`` of each encoder, best of ``repeats`` rounds; each round times every
    encoder once, in turn, so that a change of load on a shared machine hits them alike."""
    for encoder in encoders.values():
        encoder(pixels[:batch_size])  # warm-up: allocator, oneDNN primitives, ORT arenas
    best = dict.fromkeys(encoders, float("inf"))
    for round_ in range(repeats):
        for name, encoder in encoders.items():
            start = time.perf_counter()
            batched(encoder, pixels, batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
        print(f"  round {round_ + 1}/{repeats} done", file=sys.stderr)
    return best


def batched(encoder, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([encoder(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])


def onnx_variant(path: str, threads: int, level: str = "all", spinning: bool = True):
    """An ONNX Runtime session with explicit settings, as an ImageEncoder (for the variants)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(None, {"pixel_values": np.ascontiguousarray(pixel_values.numpy())})
        return F.normalize(torch.from_numpy(out), dim=-1)

    return encode


def build_encoders(model, upstream, calibration: torch.Tensor, workdir: str, threads: int, variants: bool) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from cloome_hf.inference.backends import (
        OnnxImageEncoder,
        TorchImageEncoder,
        TorchInt8ImageEncoder,
        export_image_onnx,
        quantize_int8,
    )

    cl_model = __import__("copy").deepcopy(model).to(memory_format=torch.channels_last)
    bf16_cl = TorchImageEncoder(cl_model, torch.bfloat16)

    def upstream_encode(pixels):
        with torch.no_grad():
            return F.normalize(upstream.encode_image(pixels), dim=-1)

    fp32_path = export_image_onnx(model, calibration, os.path.join(workdir, "fp32.onnx"))
    int8_path = quantize_int8(fp32_path, os.path.join(workdir, "int8.onnx"), calibration)
    encoders = {
        "upstream": upstream_encode,
        "torch fp32": TorchImageEncoder(model),
        "torch bf16 + channels_last": lambda x: bf16_cl(x.contiguous(memory_format=torch.channels_last)),
        "onnx": OnnxImageEncoder(fp32_path, threads),
        "int8": TorchInt8ImageEncoder(model, calibration),
        "onnx-int8": OnnxImageEncoder(int8_path, threads),
    }
    if variants:
        x86 = TorchInt8ImageEncoder(model, calibration)
        x86.engine = "x86"  # same int8 trunk, fbgemm/oneDNN chosen per op by torch's x86 engine
        encoders["int8, torch x86 engine"] = x86
        encoders["onnx, basic optimisation"] = onnx_variant(fp32_path, threads, "basic")
        encoders["onnx, no spinning"] = onnx_variant(fp32_path, threads, spinning=False)
        encoders["onnx-int8, extended optimisation"] = onnx_variant(int8_path, threads, "extended")
        qop_path = os.path.join(workdir, "int8.qop.onnx")
        from cloome_hf.inference.backends import _Calibration  # noqa: PLC2701 (a benchmark of the backend itself)

        quantize_static(fp32_path[:-5] + ".prep.onnx", qop_path, _Calibration(calibration, 4),
                        quant_format=QuantFormat.QOperator, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibStridedMinMax": 1})
        encoders["onnx-int8, QOperator format"] = onnx_variant(qop_path, threads)
        s8_path = os.path.join(workdir, "int8.s8s8.onnx")
        quantize_static(fp32_path[:-5] + ".prep.onnx", s8_path, _Calibration(calibration, 4),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibStridedMinMax": 1})
        encoders["onnx-int8, int8 activations"] = onnx_variant(s8_path, threads)
        fp32_cl = __import__("copy").deepcopy(model).to(memory_format=torch.channels_last)
        cl = TorchImageEncoder(fp32_cl)
        encoders["torch fp32 + channels_last"] = lambda x: cl(x.contiguous(memory_format=torch.channels_last))
        bf16 = TorchImageEncoder(model, torch.bfloat16)
        encoders["torch bf16 contiguous"] = bf16
    return encoders


def ours_input_seconds(ds, processor, batch_size: int, repeats: int) -> float:
    from cloome_hf.data import build_dataloader

    loader = build_dataloader(ds, batch_size=batch_size, train=False, image_processor=processor.image_processor)
    return best_seconds(lambda: [b["pixel_values"] for b in loader], repeats)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_sites", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", action="store_true", help="also time the ONNX Runtime setting variants")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from cloome_hf import CloomeModel
    from cloome_hf.data import load_cell_painting, open_source, prepare_dataset
    from cloome_hf.publish.convert import build_processor, convert_state_dict

    results = {"num_sites": args.num_sites, "batch_size": args.batch_size, "threads": args.threads,
               "repeats": args.repeats, "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    upstream = upstream_model()
    config, state = convert_state_dict(upstream.state_dict(), recipe="retrieval")
    model = CloomeModel(config)
    model.load_state_dict(state)
    model.eval()
    processor = build_processor("retrieval", config.molecule_config.fingerprint_size)
    with tempfile.TemporaryDirectory() as tmp:
        index = make_sites(tmp, args.num_sites + args.batch_size)  # the last batch: int8's calibration sites
        keys = __import__("pandas").read_csv(index).SAMPLE_KEY[: args.num_sites]
        files = [os.path.join(tmp, "npz", f"{k}.npz") for k in keys]
        prepare_dataset(open_source("bray_npz", index=index, root=os.path.join(tmp, "npz")),
                        os.path.join(tmp, "parquet"), shard_size=64, num_proc=1, progress=False)
        ds = load_cell_painting(os.path.join(tmp, "parquet"), split="train", cache_dir=os.path.join(tmp, "cache"))
        from cloome_hf.data import build_dataloader

        loader = build_dataloader(ds, batch_size=args.batch_size, train=False,
                                  image_processor=processor.image_processor)
        pixels = torch.cat([b["pixel_values"] for b in loader])
        pixels, calibration = pixels[: args.num_sites], pixels[args.num_sites:]
        ds = ds.select(range(args.num_sites))
        up_pixels = upstream_inputs(files)
        results["max_abs_input_difference_vs_upstream"] = float((pixels - up_pixels).abs().max())
        input_s = {"upstream": best_seconds(lambda: upstream_inputs(files), args.repeats),
                   "ours": ours_input_seconds(ds, processor, args.batch_size, args.repeats)}
        encoders = build_encoders(model, upstream, calibration, tmp, args.threads, args.variants)
        reference = batched(encoders["torch fp32"], pixels, args.batch_size).double()
        seconds = interleaved_best_seconds(encoders, pixels, args.batch_size, args.repeats)
        rows = {}
        for name, encoder in encoders.items():
            got = batched(encoder, up_pixels if name == "upstream" else pixels, args.batch_size).double()
            side = "upstream" if name == "upstream" else "ours"
            seconds_per_pass = seconds[name]
            rows[name] = {"model_sites_per_s": args.num_sites / seconds_per_pass,
                          "whole_sites_per_s": args.num_sites / (seconds_per_pass + input_s[side]),
                          "min_cosine_vs_torch_fp32": float(F.cosine_similarity(got, reference, dim=-1).min())}
    up, best = rows["upstream"], rows["torch bf16 + channels_last"]
    for row in rows.values():
        for kind in ("model", "whole"):
            row[f"{kind}_ratio_vs_upstream"] = row[f"{kind}_sites_per_s"] / up[f"{kind}_sites_per_s"]
            row[f"{kind}_ratio_vs_bf16_channels_last"] = row[f"{kind}_sites_per_s"] / best[f"{kind}_sites_per_s"]
    results["input_seconds_per_site"] = {k: v / args.num_sites for k, v in input_s.items()}
    results["rows"] = rows
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\n{'path':<30} {'model s/s':>9} {'x upstr':>7} {'x bf16cl':>8} {'whole s/s':>9} {'x upstr':>7} "
          f"{'min cos':>9}", file=sys.stderr)
    for name, r in rows.items():
        print(f"{name:<30} {r['model_sites_per_s']:>9.3f} {r['model_ratio_vs_upstream']:>7.2f} "
              f"{r['model_ratio_vs_bf16_channels_last']:>8.2f} {r['whole_sites_per_s']:>9.3f} "
              f"{r['whole_ratio_vs_upstream']:>7.2f} {r['min_cosine_vs_torch_fp32']:>9.6f}", file=sys.stderr)
    return finish(results, args.output)


if __name__ == "__main__":
    main()

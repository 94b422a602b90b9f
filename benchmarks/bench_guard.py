"""Cost of the training guard's per-step non-finite weights check (issue 22, class 1) against a whole tiny CPU step.

Run: ``python benchmarks/bench_guard.py``. Prints the ratio of the two minimum times (the target is <= 2 %).
"""
import time, torch
from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.train.guard import NonFiniteGuard
torch.manual_seed(0); torch.set_num_threads(1)
cfg = CloomeConfig(vision_config={"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1,1,1,1], "image_size": [64,64], "base_width": 8, "head_pool_size": 2}, molecule_config={"fingerprint_size": 128, "hidden_size": 32, "num_hidden_layers": 2}, projection_dim=16)
model = CloomeModel(cfg); opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
guard = NonFiniteGuard(model, opt, "cpu")
x = torch.randn(8,5,64,64); fp = (torch.rand(8,128) > 0.5).float()
def step():
    b = guard.snapshot_buffers(); loss = model(pixel_values=x, fingerprints=fp, return_loss=True).loss
    loss.backward(); n = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")); guard.record(loss, n)
    s = guard.snapshot_state(); opt.step(); guard.undo_if_skipped(b, s); opt.zero_grad()
def timed(f, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); out.append(time.perf_counter() - t0)
    return min(out)
for _ in range(3): step()
s = timed(step, 20); w = timed(guard._record_weights, 200)
print(f"weights check / whole step (min times): {w/s:.4f}  ({w*1e3:.2f} ms / {s*1e3:.1f} ms)")

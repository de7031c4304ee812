"""The PyTorch reference, timed on this machine in the same run as ours.

Loads the reference network from ../shared/reference/network.py (never copied
into the project) and times what benchmarks/run_all.py times for mirl_jax: the
forward of one image, and a training step as the reference's pruned rounds run
it (L1 loss, AdamW with lr 2e-4 and weight decay 0.01, gradients of pruned
weights zeroed, weights multiplied by their masks after the step). Needs torch
and einops (`pip install -e ".[bench]"`); PyTorch uses all cores, as its default.

    python benchmarks/bench_reference.py [--sizes 128 256] [--steps 3]
"""

import argparse
import contextlib
import importlib.util
import json
import resource
import statistics
import time
from pathlib import Path

NETWORK = Path(__file__).resolve().parents[2] / "shared" / "reference" / "network.py"


def available() -> str:
  """'' if the reference can run here, else why not."""
  if not NETWORK.is_file():
    return f"no reference network at {NETWORK}"
  missing = [m for m in ("torch", "einops") if importlib.util.find_spec(m) is None]
  return f"{' and '.join(missing)} not installed (pip install -e '.[bench]')" if missing else ""


def _network():
  spec = importlib.util.spec_from_file_location("reference_network", NETWORK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.PromptIR(decoder=True)


def _rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def forward(size: int, repeats: int) -> dict:
  """Median seconds of one (1, 3, size, size) forward under no_grad, after a warm-up."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  net = _network().eval()
  x = torch.rand(1, 3, size, size)
  times = []
  with torch.no_grad():
    for _ in range(repeats + 1):
      start = time.perf_counter()
      net(x)
      times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times[1:]), "peak_rss_gib": _rss_gib()}


def masked_step(net, x, y, autocast=contextlib.nullcontext):
  """run() -> loss: one step of `net` as the reference's pruned rounds run it, on any device.

  L1 loss (under `autocast`, e.g. torch.autocast for bf16), AdamW (lr 2e-4, decay
  0.01), gradients of pruned weights zeroed, weights re-masked after the step.
  """
  import torch  # pylint: disable=import-outside-toplevel

  net.train()
  weights = [p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1]
  masks = []
  for p in weights:  # 20% of each tensor's smallest weights: what a step costs does not depend
    keep = p.detach().abs() >= p.detach().abs().flatten().kthvalue(max(1, p.numel() // 5))[0]
    masks.append(keep.float())  # on which weights are pruned
  optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=0.01)

  def run():
    optimizer.zero_grad()
    with autocast():
      loss = torch.nn.functional.l1_loss(net(x), y)
    loss.backward()
    for p, m in zip(weights, masks):
      if p.grad is not None:  # the six convs the network defines and never uses
        p.grad.mul_(m)
    optimizer.step()
    with torch.no_grad():
      for p, m in zip(weights, masks):
        p.mul_(m)
    return loss

  return run


def train_step(batch: int, size: int, steps: int) -> dict:
  """Median seconds of a masked training step (a pruned round, 20% of weights pruned)."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  net = _network()
  run = masked_step(net, torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size))
  times = []
  for _ in range(steps + 1):
    start = time.perf_counter()
    loss = run()
    times.append(time.perf_counter() - start)
  return {
      "step_s": statistics.median(times[1:]),
      "peak_rss_gib": _rss_gib(),
      "loss": float(loss.detach()),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  why = available()
  if why:
    raise SystemExit(f"error: cannot run the reference: {why}")
  for size in args.sizes:
    print(json.dumps({"forward": size, **forward(size, args.repeats)}))
  print(json.dumps({"train_step": "8x64x64", **train_step(8, 64, args.steps)}))


if __name__ == "__main__":
  main()

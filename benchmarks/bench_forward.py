"""Forward pass of the default PromptIR on this CPU.

Each image size runs in a fresh subprocess so that its peak RSS (ru_maxrss) is
its own. The forward is `--mode restore`'s: compiled first, then the params
drawn and placed (restore.compile_forward, restore.make_forward). Reported per
size: compile time, median forward time, peak RSS of the whole process (JAX
runtime, compile, params and run), and the RSS the params and the run add to
the compile's peak. The PyTorch reference, timed in the same run, is in
benchmarks/run_all.py (or benchmarks/bench_reference.py).

    python benchmarks/bench_forward.py [--repeats 5] [--sizes 128 256]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(size: int, repeats: int, model=None) -> dict:
  """`model` defaults to the default PromptIR (the reference's network)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mirl_jax import models, restore  # pylint: disable=import-outside-toplevel

  model = models.PromptIR() if model is None else model
  x = jax.device_put(np.random.default_rng(0).random((1, size, size, 3), np.float32))
  start = time.perf_counter()
  restore.compile_forward(model, [x.shape])  # as --mode restore does, before reading a ticket
  compile_s = time.perf_counter() - start
  forward = restore.make_forward(model, models.init_params(model, jax.random.key(0)))
  rss_compiled = _rss_gib()
  jax.block_until_ready(forward(x))  # its first call still traces the network
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(forward(x))
    times.append(time.perf_counter() - start)
  return dict(
      size=size,
      compile_s=compile_s,
      median_s=statistics.median(times),
      peak_rss_gib=_rss_gib(),
      run_adds_gib=_rss_gib() - rss_compiled,
  )


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure(args.one, args.repeats)))
    return
  print("| input | compile s | median forward s | peak RSS GiB |")
  print("|---|---|---|---|")
  for size in args.sizes:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(size), "--repeats", str(args.repeats)],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"| 1x{size}x{size}x3 | {r['compile_s']:.1f} | {r['median_s']:.3f} | "
        f"{r['peak_rss_gib']:.2f} (run adds {r['run_adds_gib']:.2f}) |"
    )


if __name__ == "__main__":
  main()

"""Forward pass of the default PromptIR on this CPU against the PyTorch reference.

Each image size runs in a fresh subprocess so that its peak RSS (ru_maxrss) is
its own. Reported per size: compile time, median jitted forward time, peak RSS
of the whole process (JAX runtime, params, compile and run), and the RSS the
run adds once compiled.
Reference (PyTorch, 2 threads, this machine): 128x128 2.10 s, 0.61 GiB;
256x256 9.77 s, 1.19 GiB. Target: a third of the time, half of the memory.

    python benchmarks/bench_forward.py [--repeats 5] [--sizes 128 256]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

REFERENCE = {128: (2.10, 0.61), 256: (9.77, 1.19)}


def _rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(size: int, repeats: int, model=None) -> dict:
  """`model` defaults to the default PromptIR (the reference's network)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mirl_jax import models  # pylint: disable=import-outside-toplevel

  model = models.PromptIR() if model is None else model
  params = jax.device_put(models.init_params(model, jax.random.key(0)))
  x = jax.device_put(np.random.default_rng(0).random((1, size, size, 3), np.float32))
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  start = time.perf_counter()
  compiled = forward.lower(params, x).compile()
  compile_s = time.perf_counter() - start
  rss_compiled = _rss_gib()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  return dict(size=size, compile_s=compile_s, median_s=statistics.median(times),
              peak_rss_gib=_rss_gib(), run_adds_gib=_rss_gib() - rss_compiled)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure(args.one, args.repeats)))
    return
  print("| input | compile s | median forward s | ref s | peak RSS GiB | ref GiB |")
  print("|---|---|---|---|---|---|")
  for size in args.sizes:
    out = subprocess.run([sys.executable, __file__, "--one", str(size), "--repeats",
                          str(args.repeats)], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ref_s, ref_gib = REFERENCE.get(size, (float("nan"), float("nan")))
    print(f"| 1x{size}x{size}x3 | {r['compile_s']:.1f} | {r['median_s']:.3f} | {ref_s} | "
          f"{r['peak_rss_gib']:.2f} (run adds {r['run_adds_gib']:.2f}) | {ref_gib} |")


if __name__ == "__main__":
  main()

"""What re-creating theta_0 costs: `models.init_params` of the default network.

Every pruned round rewinds to theta_0, re-created from the run's key, so a
round starts with this draw. Each repeat runs in a fresh process (its own peak
RSS): two inits in a row, the second while the first's params are still held,
as a round holds its trained params while it rewinds. Reported: the time of
each init and the process's peak RSS, medians over `--repeats` processes.

    python benchmarks/bench_init.py [--repeats 3]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure() -> dict:
  from mirl_jax import runtime  # pylint: disable=import-outside-toplevel,unused-import  # XLA flags
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import models  # pylint: disable=import-outside-toplevel

  model = models.PromptIR()
  models.param_shapes(model)  # Flax's shape inference (once per model), not the draw
  start = time.perf_counter()
  first = models.init_params(model, jax.random.key(0))
  middle = time.perf_counter()
  second = models.init_params(model, jax.random.key(1))
  end = time.perf_counter()
  assert len(jax.tree.leaves(first)) == len(jax.tree.leaves(second))
  return dict(
      first_s=middle - start,
      second_s=end - middle,
      peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  )


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure()))
    return
  runs = []
  for _ in range(args.repeats):
    out = subprocess.run(
        [sys.executable, __file__, "--one"], check=True, capture_output=True, text=True
    )
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  peaks = ", ".join(f"{r['peak_rss_gib']:.2f}" for r in runs)
  print(
      f"init_params, default network, median of {args.repeats} processes: first "
      f"{median['first_s']:.2f} s, second {median['second_s']:.2f} s, peak RSS "
      f"{median['peak_rss_gib']:.2f} GiB (peaks {peaks})"
  )


if __name__ == "__main__":
  main()

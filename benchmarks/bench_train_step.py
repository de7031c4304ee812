"""One training step of the default PromptIR on this CPU, and one pruning round.

Each configuration runs in a fresh subprocess so its peak RSS (ru_maxrss) is its
own. Reported: compile time, median step time, peak RSS of a masked step (a
pruned round) and of an unmasked one (round 0), the masking share of the step
as their difference, and the median time of a global pruning round over the
full network (33M prunable weights, all alive: the slowest round). Params come
from models.init_params (PyTorch's scales). The PyTorch reference's step, timed
in the same run, is in benchmarks/run_all.py (or benchmarks/bench_reference.py).

Children run with the XLA flags every mirl_jax command sets (--xla_flags to change).

    python benchmarks/bench_train_step.py [--steps 5] [--batch 8] [--size 64] [--microbatches 1]
        [--remat none|blocks] [--dtype float32|bfloat16] [--layout stacked|per-block]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

#: The children's XLA_FLAGS unless --xla_flags says otherwise: those every command sets
#: (mirl_jax.runtime.XLA_CPU_FLAGS).
XLA_FLAGS = (
    "--xla_cpu_enable_concurrency_optimized_scheduler=false --xla_backend_optimization_level=1"
)


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


#: The state's layout: "stacked" as a round trains (mirl_jax.scan_layout), or "per-block" as
#: checkpoints hold it (the step stacks and unstacks each run of blocks itself).
LAYOUTS = ("stacked", "per-block")


def setup(model, batch: int, size: int, masked: bool = True, layout: str = "stacked") -> tuple:
  """(mesh, state, masks, x, y) of a one-device step: PyTorch-scaled init params, 20% of
  them pruned if `masked` (else masks None: round 0), random images."""
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import lottery, masks as masks_lib, models, scan_layout, train_step as ts  # pylint: disable=import-outside-toplevel

  params = models.init_params(model, jax.random.key(0))
  masks = lottery.prune(params, masks_lib.dense_masks(params), 20) if masked else None
  mesh = ts.make_mesh(jax.devices()[:1])
  state = ts.create_train_state(model, params, ts.make_optimizer(2e-4))
  if layout == "stacked":
    state = scan_layout.stack_state(jax.device_get(state), model)
    masks = None if masks is None else scan_layout.stack(masks, model)
  rng = np.random.default_rng(0)
  x, y = (ts.shard_batch(mesh, rng.random((batch, size, size, 3), np.float32)) for _ in "xy")
  return mesh, ts.replicate(mesh, state), ts.replicate(mesh, masks), x, y


def run_step(
    masked: bool,
    steps: int,
    batch: int,
    size: int,
    microbatches: int,
    model=None,
    layout: str = "stacked",
) -> dict:
  """One configuration, in this process: compile, then `steps` timed steps.

  `model` defaults to the default PromptIR (the reference's network).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import train_step as ts  # pylint: disable=import-outside-toplevel
  from mirl_jax.models import PromptIR  # pylint: disable=import-outside-toplevel

  model = PromptIR() if model is None else model
  mesh, state, masks, x, y = setup(model, batch, size, masked, layout)
  step = ts.make_train_step(mesh, microbatches=microbatches)
  t = time.perf_counter()
  compiled = step.lower(state, masks, x, y).compile()
  compile_s = time.perf_counter() - t
  ts.release_freed_memory()  # as train_step.run_steps does after its first step
  temp_gib = compiled.memory_analysis().temp_size_in_bytes / 2**30
  times = []
  for _ in range(steps + 1):  # the first run also pays allocation warm-up
    t = time.perf_counter()
    state, metrics = compiled(state, masks, x, y)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  return {
      "compile_s": compile_s,
      "temp_gib": temp_gib,
      "step_s": statistics.median(times[1:]),
      "steps_s": times[1:],
      "peak_rss_gib": _peak_rss_gib(),
      "loss": float(metrics["loss"]),
  }


def run_prune(repeats: int, model=None) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import lottery, masks as masks_lib, models  # pylint: disable=import-outside-toplevel
  from mirl_jax.models import PromptIR  # pylint: disable=import-outside-toplevel

  params = models.init_params(PromptIR() if model is None else model, jax.random.key(0))
  masks = masks_lib.dense_masks(params)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    lottery.prune(params, masks, 20, "global")
    times.append(time.perf_counter() - t)
  return {"prune_s": statistics.median(times), "prune_all_s": times}


def _child(kind: str, args) -> dict | None:
  """The child's figures, or None if it died (e.g. killed for lack of memory)."""
  cmd = [
      sys.executable,
      __file__,
      "--child",
      kind,
      "--steps",
      str(args.steps),
      "--batch",
      str(args.batch),
      "--size",
      str(args.size),
      "--microbatches",
      str(args.microbatches),
      "--remat",
      args.remat,
      "--dtype",
      args.dtype,
      "--layout",
      args.layout,
  ]
  env = dict(os.environ, XLA_FLAGS=args.xla_flags)
  out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  if out.returncode:
    print(
        f"  {kind}: exit code {out.returncode}{' (killed: out of memory?)' if out.returncode == -9 else ''}"
        f"\n{out.stderr[-1500:]}"
    )
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument(
      "--microbatches", type=int, default=1, help="split the batch to bound activation memory"
  )
  parser.add_argument("--remat", default="none", help="PromptIR's remat (model.remat)")
  parser.add_argument("--dtype", default="float32", help="PromptIR's compute dtype (model.dtype)")
  parser.add_argument(
      "--layout", choices=LAYOUTS, default="stacked", help="the train state's layout (see setup)"
  )
  parser.add_argument("--xla_flags", default=XLA_FLAGS)
  parser.add_argument(
      "--only",
      choices=("masked", "dense", "prune"),
      action="append",
      help="run only these configurations (repeatable)",
  )
  parser.add_argument("--child", choices=("masked", "dense", "prune"))
  args = parser.parse_args()
  if args.child == "prune":
    print(json.dumps(run_prune(5)))
    return
  if args.child:
    from mirl_jax.models import PromptIR  # pylint: disable=import-outside-toplevel

    print(
        json.dumps(
            run_step(
                args.child == "masked",
                args.steps,
                args.batch,
                args.size,
                args.microbatches,
                PromptIR(remat=args.remat, dtype=args.dtype),
                args.layout,
            )
        )
    )
    return
  shape = f"{args.batch}x{args.size}x{args.size}x3"
  kinds = args.only or ["masked", "dense", "prune"]
  res = {k: _child(k, args) for k in kinds}
  print(
      f"PromptIR (default, remat={args.remat}, {args.dtype}, {args.layout} layout) training "
      f"step, batch {shape} "
      f"in {args.microbatches} microbatch(es), CPU, median of {args.steps}, "
      f"XLA_FLAGS={args.xla_flags!r}:"
  )
  for name, key in (("masked (rounds >= 1)", "masked"), ("unmasked (round 0)", "dense")):
    r = res.get(key)
    if r:
      print(
          f"  {name:22} step {r['step_s']:6.2f} s   compile {r['compile_s']:6.1f} s   "
          f"peak RSS {r['peak_rss_gib']:5.2f} GiB (XLA temp {r['temp_gib']:.2f} GiB)"
      )
  if res.get("masked") and res.get("dense"):
    share = (res["masked"]["step_s"] - res["dense"]["step_s"]) / res["masked"]["step_s"]
    print(f"  masking share of the step: {100 * share:.1f}% (masked - unmasked)")
  if res.get("prune"):
    p = res["prune"]
    print(
        f"pruning round (global, 33.0M alive weights): median {p['prune_s']:.2f} s "
        f"of {[round(t, 2) for t in p['prune_all_s']]}"
    )


if __name__ == "__main__":
  main()

"""What the fault guards cost: checksums on save and restore, the workdir lock during steps.

Checksums (integrity.py) hash every array of a ticket or checkpoint when it is
saved and when it is restored; the workdir lock (workdir_lock.py) rewrites a
small file from a thread every 30 s and re-reads it before each save; the
lost-process watchdog (liveness.py, multi-process runs only) sets and reads two
keys of the coordination service every `--heartbeat_timeout`/10 s. None of
them runs inside a training step.

Measured here, medians of `--repeats`:
  - the default network's ticket (10% of its prunable weights kept) and a
    mid-round checkpoint of it (ticket, Adam's moments, data iterator):
    save and restore with and without the checksums;
  - the sha256 of that ticket alone;
  - the demo network's training step with and without a held workdir lock
    whose heartbeat runs every 0.05 s (600 times its default rate), the two
    interleaved.

    python benchmarks/bench_integrity.py [--repeats 5] [--out benchmarks/results/integrity.json]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `configs`

from mirl_jax import runtime  # pylint: disable=wrong-import-position,unused-import  # XLA flags

import grain  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mirl_jax import checkpointing  # pylint: disable=wrong-import-position
from mirl_jax import integrity  # pylint: disable=wrong-import-position
from mirl_jax import masks as masks_lib  # pylint: disable=wrong-import-position
from mirl_jax import models  # pylint: disable=wrong-import-position
from mirl_jax import train_checkpoints  # pylint: disable=wrong-import-position
from mirl_jax import train_step  # pylint: disable=wrong-import-position
from mirl_jax import workdir_lock  # pylint: disable=wrong-import-position


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _unchecked():
  """Patches that skip the checksums: what saving and restoring cost without them."""
  return [
      mock.patch.object(integrity, "seal", lambda meta, trees=None, digests=None: meta),
      mock.patch.object(integrity, "check", lambda *a, **k: None),
      mock.patch.object(integrity, "check_meta", lambda meta, where: meta),
  ]


def _both(fn, repeats: int) -> dict:
  checked = median_seconds(fn, repeats)
  patches = _unchecked()
  for p in patches:
    p.start()
  try:
    unchecked = median_seconds(fn, repeats)
  finally:
    for p in patches:
      p.stop()
  return {"with_checksums_s": checked, "without_s": unchecked}


def saves(repeats: int) -> dict:
  model = models.PromptIR()
  params = jax.tree.map(np.asarray, models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(0)
  masks = jax.tree_util.tree_map_with_path(
      lambda path, p: (rng.random(p.shape) < 0.1) if masks_lib.is_prunable(path) else None, params
  )
  params = jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks))
  state = train_step.create_train_state(model, params, train_step.make_optimizer(1e-3))
  state = jax.tree.map(np.asarray, state)
  packed = checkpointing.pack_ticket(params, masks)
  out = {
      "ticket_digest": {"seconds": median_seconds(lambda: integrity.tree_digest(packed), repeats)}
  }
  out["ticket_digest"]["megabytes"] = sum(x.nbytes for x in jax.tree.leaves(packed)) / 2**20
  with tempfile.TemporaryDirectory() as tmp:
    index = iter(range(10**6))
    out["ticket_save"] = _both(
        lambda: checkpointing.save_ticket(tmp, next(index), params, masks, {}), repeats
    )
    out["ticket_restore"] = _both(lambda: checkpointing.restore_ticket(tmp, 0), repeats)
    checkpoints = train_checkpoints.TrainCheckpoints(tmp, max_to_keep=None)
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    out["checkpoint_save"] = _both(
        lambda: checkpoints.save(next(index), state, masks, iterator, {"round": 1}), repeats
    )
    make = lambda: iter(grain.MapDataset.range(10).to_iter_dataset())
    out["checkpoint_restore"] = _both(
        lambda: train_checkpoints.TrainCheckpoints(tmp).restore_latest(1, state, make), repeats
    )
  return out


def steps(repeats: int, count: int = 40) -> dict:
  from configs import demo  # pylint: disable=import-outside-toplevel

  model = models.PromptIR(**demo.get_config().model)
  params = models.init_params(model, jax.random.key(0))
  mesh = train_step.make_mesh()
  state = train_step.replicate(
      mesh, train_step.create_train_state(model, params, train_step.make_optimizer(1e-3))
  )
  masks = train_step.replicate(mesh, masks_lib.dense_masks(params))
  step = train_step.make_train_step(mesh)
  rng = np.random.default_rng(0)
  batch = [rng.random((8, 32, 32, 3), np.float32) for _ in range(2)]

  def run():
    nonlocal state
    for _ in range(count):
      state, metrics = step(state, masks, *batch)
    jax.block_until_ready(metrics)

  run()  # compile
  held, free = [], []
  for _ in range(repeats):  # interleaved, so that the machine's drift hits both alike
    free.append(median_seconds(run, 1) / count)
    with tempfile.TemporaryDirectory() as tmp:
      with workdir_lock.WorkdirLock(tmp, heartbeat_s=0.05):
        held.append(median_seconds(run, 1) / count)
  return {
      "demo_step_with_lock_s": statistics.median(held),
      "demo_step_without_s": statistics.median(free),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "integrity.json"))
  opts = parser.parse_args()
  results = {"saves": saves(opts.repeats), "steps": steps(opts.repeats)}
  digest = results["saves"].pop("ticket_digest")
  print(f"sha256 of the ticket  {digest['seconds']:.3f} s for {digest['megabytes']:.1f} MB")
  for name, r in results["saves"].items():
    extra = r["with_checksums_s"] - r["without_s"]
    print(
        f"{name:20s} with checksums {r['with_checksums_s']:.3f} s, without "
        f"{r['without_s']:.3f} s ({extra:+.3f} s)"
    )
  s = results["steps"]
  print(
      f"demo training step   with the lock held {1000 * s['demo_step_with_lock_s']:.1f} ms, "
      f"without {1000 * s['demo_step_without_s']:.1f} ms"
  )
  results["saves"]["ticket_digest"] = digest
  Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")
  print(f"Wrote {opts.out}")


if __name__ == "__main__":
  main()

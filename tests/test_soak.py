"""Sixteen rounds hold no more than three: no round leaves files, threads, processes or memory.

A real run trains 16 rounds over days, and every round re-creates its data iterator (with Grain
worker processes), TensorBoard writer, checkpoints, evaluation and figures. This runs the real
command line for 16 short rounds of the tiny network in a child process and reads what
mirl_jax.resources recorded after each round: from round 2 on (rounds 0 and 1 still start
things once: compiles, the pruned step's masks, multiprocessing's resource tracker) nothing may
grow.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirl_jax import resources

pytestmark = pytest.mark.slow  # a whole 16-round run of the CLI in a child process

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "tests" / "tiny_config.py")
ROUNDS = 16
# Memory from round 2 to the last, measured on this 2-core machine: RSS +26 to +45 MB over the 13
# rounds, fast at first and 1 to 2 MB a round by the end (jax's trace caches, orbax's tensorstore
# specs: a few hundred KB of Python objects a round, the rest native; malloc_trim does not undo
# it). Peak RSS follows it when the compiles come from the cache; in a fresh cache round 0's
# compiles set it (about 2 GB) and it stays. What a round leaves behind adds up over 13 rounds: 3 MB
# a round crosses the RSS bound.
PEAK_GROWTH_MB = 60
RSS_GROWTH_MB = 80
# OS threads (XLA's pools, orbax's background threads) come and go around a
# round's end: 99 to 103 measured from round 2 on. A thread left behind per round would be +13.
THREAD_SLACK = 4


def _cli(shared, workdir, *args):
  cmd = [
      sys.executable,
      "-m",
      "mirl_jax.main",
      f"--config={CONFIG}",
      f"--workdir={workdir}",
      f"--config.data.manual_dir={shared / 'demo' / 'raw'}",
      f"--config.data.data_dir={shared / 'demo' / 'tfds'}",
      *args,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(shared / "xla")}
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)


def test_sixteen_rounds_hold_no_more_than_three(tmp_path):
  start = time.monotonic()
  done = _cli(
      tmp_path,
      tmp_path / "run",
      f"--config.lottery.rounds={ROUNDS - 1}",
      # Short rounds: one noise level, 3 steps of 8 patches, a mid-round checkpoint at step 2.
      "--config.data.sigmas=(25,)",
      "--config.data.batch_size=8",
      "--config.train.epochs=1",
      "--config.train.warmup_epochs=0",
      "--config.train.checkpoint_every_steps=2",
      # Worker processes, as in real runs (configs/all_in_one.py has 2): each round starts and
      # stops its own. One is the same code as two, and starts faster on 2 cores.
      "--config.data.worker_count=1",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  print(f"16 rounds in {time.monotonic() - start:.0f} s")

  entries = resources.read(str(tmp_path / "run"))
  assert [e["round"] for e in entries] == list(range(ROUNDS))
  settled, later = entries[2], entries[3:]
  for name in ("open_fds", "children", "zombies"):
    assert max(e[name] for e in later) <= settled[name], [e[name] for e in entries]
  assert max(e["threads"] for e in later) <= settled["threads"] + THREAD_SLACK, [
      e["threads"] for e in entries
  ]
  for name, bound in (("peak_rss_mb", PEAK_GROWTH_MB), ("rss_mb", RSS_GROWTH_MB)):
    assert entries[-1][name] - settled[name] < bound, [round(e[name]) for e in entries]

"""What real runs go through: SIGKILL mid-step, mid-save and between rounds, a NaN.

Each run is the real command line (tests/tiny_config.py) in a child process.
The child is the CLI with one fault planted: it kills itself with SIGKILL
at a chosen point, or feeds a NaN batch at a chosen step. A restarted run
must end with exactly the tickets of an uninterrupted one, and every
checkpoint on disk must still restore.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mirl_jax import checkpointing

pytestmark = pytest.mark.slow  # whole runs of the CLI in child processes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "tests" / "tiny_config.py")
STEPS_PER_ROUND = 24  # tiny_config: 2 epochs of 12 batches; checkpoints every 3 steps

# The CLI with one fault: argv[1] is the kind, argv[2] where it strikes.
FAULTY_MAIN = r"""
import os, signal, sys
from absl import app
from mirl_jax import main, checkpointing, train_step
import orbax.checkpoint as ocp

kind, where = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if kind in ("step", "nan"):  # where: the 1-based count of steps this process runs
  make = train_step.make_train_step
  def make_faulty(mesh, *args, **kwargs):
    step_fn, calls = make(mesh, *args, **kwargs), [0]
    def faulty(state, masks, degraded, clean):
      calls[0] += 1
      if kind == "nan" and calls[0] == int(where):
        degraded = degraded * float("nan")
      out = step_fn(state, masks, degraded, clean)
      if kind == "step" and calls[0] == int(where):
        die()  # the step is queued on the device, not finished
      return out
    return faulty
  train_step.make_train_step = make_faulty
elif kind == "save":  # where: "checkpoints/<step>" or "tickets/<round>"
  temporary = ocp.path.atomicity.AtomicRenameTemporaryPath
  finalize = temporary.finalize
  async def finalize_or_die(self):
    final = self.get_final()
    if f"{final.parent.name}/{final.name}" == where:
      die()  # everything is written to the tmp dir; the commit never happens
    return await finalize(self)
  temporary.finalize = finalize_or_die
elif kind == "after_ticket":  # where: the round whose ticket was just saved
  save_ticket = checkpointing.save_ticket
  def save_then_die(workdir, index, *args, **kwargs):
    path = save_ticket(workdir, index, *args, **kwargs)
    if kwargs.get("folder", checkpointing.TICKETS) == checkpointing.TICKETS and index == int(where):
      die()  # before the round's evaluation and reports
    return path
  checkpointing.save_ticket = save_then_die
app.run(main.main)
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """One demo dataset and one compilation cache for every child process."""
  return tmp_path_factory.mktemp("shared")


def _run(shared, workdir, *args, fault=None):
  cmd = [
      sys.executable,
      "-c",
      FAULTY_MAIN,
      *(fault or ("none", "0")),
      f"--config={CONFIG}",
      f"--workdir={workdir}",
      f"--config.data.manual_dir={shared / 'demo' / 'raw'}",
      f"--config.data.data_dir={shared / 'demo' / 'tfds'}",
      *args,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(shared / "xla")}
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)


@pytest.fixture(scope="module")
def uninterrupted(shared):
  workdir = shared / "uninterrupted"
  done = _run(shared, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def _assert_same_tickets(want_dir, got_dir):
  assert checkpointing.ticket_indices(str(got_dir)) == [0, 1]
  for index in (0, 1):
    want = checkpointing.restore_ticket(str(want_dir), index)
    got = checkpointing.restore_ticket(str(got_dir), index)
    for a, b in zip(jax.tree.leaves(want[:2]), jax.tree.leaves(got[:2])):
      np.testing.assert_array_equal(a, b)


def _assert_all_checkpoints_restore(workdir):
  """No tmp leftovers, and every ticket and checkpoint reads back whole."""
  for folder in (checkpointing.TICKETS, checkpointing.CHECKPOINTS):
    names = os.listdir(workdir / folder)
    assert all(name.isdigit() for name in names), names
  for index in checkpointing.ticket_indices(str(workdir)):
    params, _, _ = checkpointing.restore_ticket(str(workdir), index)
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  meta = checkpointing.TrainCheckpoints(str(workdir)).latest_meta()
  assert meta is not None and meta["config"]["seed"] == 0


def test_a_run_killed_again_and_again_ends_as_if_never_killed(shared, uninterrupted, tmp_path):
  """One run, SIGKILLed at four points in turn, each restart taking up the last."""
  workdir = tmp_path / "run"

  def killed(fault):
    done = _run(shared, workdir, fault=fault)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return done.stderr

  def uncommitted(folder, name):
    """The killed save's files are on disk, and not taken for a checkpoint."""
    assert any(n.startswith(f"{name}.orbax-checkpoint-tmp") for n in os.listdir(workdir / folder))
    assert int(name) not in checkpointing.ticket_indices(str(workdir), folder=folder)

  # Between rounds: round 0's ticket is saved, its evaluation never ran.
  killed(("after_ticket", "0"))
  assert checkpointing.ticket_indices(str(workdir)) == [0]
  # During a step: the 11th step of round 1 is queued on the device (calls count
  # per process); the last checkpoint is at step 9 of round 1.
  killed(("step", "11"))
  # During a checkpoint save: step 12's files written, never committed.
  log = killed(("save", f"checkpoints/{STEPS_PER_ROUND + 12}"))
  assert f"Resuming round 1 at step 9 of {STEPS_PER_ROUND}" in log
  uncommitted("checkpoints", str(STEPS_PER_ROUND + 12))
  # During the ticket save at the end of round 1.
  log = killed(("save", "tickets/1"))
  assert f"Resuming round 1 at step 9 of {STEPS_PER_ROUND}" in log
  uncommitted("tickets", "1")

  done = _run(shared, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resuming round 1 at step 21 of {STEPS_PER_ROUND}" in done.stderr
  _assert_same_tickets(uninterrupted, workdir)
  _assert_all_checkpoints_restore(workdir)
  summary = (workdir / "summary.json").read_text()
  assert summary == (uninterrupted / "summary.json").read_text()  # every round reported once


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(shared, tmp_path):
  workdir = tmp_path / "run"
  # Step 11 of round 1 gets a NaN batch; a checkpoint is due right after it.
  done = _run(shared, workdir, fault=("nan", str(STEPS_PER_ROUND + 12)))
  assert done.returncode == 1
  assert "error: non-finite training values in round 1 at step 11: loss=nan" in done.stderr
  assert "Traceback" not in done.stderr
  steps = checkpointing.TrainCheckpoints(str(workdir))
  assert steps.latest_meta()["step"] == STEPS_PER_ROUND + 9  # the NaN was never saved
  assert checkpointing.ticket_indices(str(workdir)) == [0]
  _assert_all_checkpoints_restore(workdir)


def test_a_changed_config_or_architecture_is_refused_by_name(shared, uninterrupted):
  before = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
  done = _run(shared, uninterrupted, "--config.model.dim=8", "--config.train.epochs=3")
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert "holds a run made with another config" in done.stderr
  assert "model.dim: 4 -> 8" in done.stderr and "train.epochs: 2 -> 3" in done.stderr

  done = _run(shared, uninterrupted, "--mode=evaluate", "--config.model.dim=8")
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert "made for another architecture" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and "shape mismatches (" in done.stderr
  assert "is --config the one the run was made with?" in done.stderr
  assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == before
  assert checkpointing.ticket_indices(str(uninterrupted)) == [0, 1]

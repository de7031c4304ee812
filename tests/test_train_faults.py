"""What real runs go through: SIGKILL mid-step, mid-save and between rounds, a NaN.

Each run is the real command line (tests/tiny_config.py) in a child process.
The child is the CLI with one fault planted: it kills itself with SIGKILL
at a chosen point, or feeds a NaN batch at a chosen step. A restarted run
must end with exactly the tickets of an uninterrupted one, and every
checkpoint on disk must still restore.
"""

import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import flip_bit
from mirl_jax import checkpointing
from mirl_jax import train_checkpoints

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
elif kind == "fill":  # where: the checkpoint step after whose save the disk fills up
  from mirl_jax import train_checkpoints
  save = train_checkpoints.TrainCheckpoints.save
  def save_then_fill(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == int(where):
      with open(os.environ["FILLER"], "wb") as f:
        try:
          while True:
            f.write(bytes(1 << 16)); f.flush()
        except OSError:
          pass
  train_checkpoints.TrainCheckpoints.save = save_then_fill
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


def _command(shared, workdir, *args, fault=None):
  return [
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


def _env(shared, **more):
  return {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(shared / "xla"),
      **more,
  }


def _run(shared, workdir, *args, fault=None, env=None):
  return subprocess.run(
      _command(shared, workdir, *args, fault=fault),
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=900,
      env=_env(shared, **(env or {})),
  )


def _start(shared, workdir, *args, fault=None):
  """Like _run, without waiting: the child process, its stderr piped."""
  cmd = _command(shared, workdir, *args, fault=fault)
  return subprocess.Popen(
      cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(shared)
  )


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
  for folder in (checkpointing.TICKETS, train_checkpoints.CHECKPOINTS):
    names = os.listdir(workdir / folder)
    assert all(name.isdigit() for name in names), names
  for index in checkpointing.ticket_indices(str(workdir)):
    params, _, _ = checkpointing.restore_ticket(str(workdir), index)
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  meta = train_checkpoints.TrainCheckpoints(str(workdir)).latest_meta()
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

  # Between rounds: round 0's ticket is saved, its evaluation never ran. While this
  # run holds the workdir, a second one is refused at once, naming it.
  first = _start(shared, workdir, fault=("after_ticket", "0"))
  while not (workdir / ".lock" / "owner.json").exists():
    assert first.poll() is None, first.communicate()[1][-3000:]
    time.sleep(0.05)
  second = _run(shared, workdir)
  assert second.returncode == 1, second.stderr[-3000:]
  assert f"error: {workdir} is in use by the run started " in second.stderr
  assert f", pid {first.pid} (last heartbeat " in second.stderr
  assert first.wait(timeout=900) == -signal.SIGKILL, first.communicate()[1][-3000:]
  assert checkpointing.ticket_indices(str(workdir)) == [0]
  # During a step: the 11th step of round 1 is queued on the device (calls count
  # per process); the last checkpoint is at step 9 of round 1. The dead run's lock
  # is taken over.
  log = killed(("step", "11"))
  assert f"Taking over {workdir} from the run started " in log
  assert f"pid {first.pid} no longer runs on this host" in log
  # A bit flips in the newest checkpoint (step 9 of round 1): the run says so and
  # resumes from the one before. Then, during a checkpoint save: step 12's files
  # written, never committed.
  newest = workdir / "checkpoints" / str(STEPS_PER_ROUND + 9)
  data = max((p for p in (newest / "ticket").rglob("*") if p.is_file()), key=os.path.getsize)
  flip_bit(data)
  log = killed(("save", f"checkpoints/{STEPS_PER_ROUND + 12}"))
  assert f"{newest} is corrupted: " in log and "an older checkpoint is used instead" in log
  assert f"Resuming round 1 at step 6 of {STEPS_PER_ROUND}" in log
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
  steps = train_checkpoints.TrainCheckpoints(str(workdir))
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


def _one_error_line(done, starts: str):
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(starts), done.stderr[-3000:]
  return last


def test_a_corrupted_ticket_is_refused_by_name_by_every_mode(shared, uninterrupted, tmp_path):
  """A ticket has no spare: training on, evaluation, restoring and export all stop."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  ticket = workdir / "tickets" / "1"
  data = max((p for p in (ticket / "ticket").rglob("*") if p.is_file()), key=os.path.getsize)
  flip_bit(data)
  image = next((shared / "demo" / "raw").rglob("*.png"))
  for mode in (
      ["--config.lottery.rounds=2"],
      ["--mode=evaluate"],
      [
          "--mode=restore",
          f"--config.restore.inputs={image}",
          f"--config.restore.output_dir={tmp_path}/out",
      ],
      ["--mode=export", f"--config.export.output={tmp_path}/ticket.pth"],
  ):
    done = _run(shared, workdir, *mode)
    _one_error_line(done, f"error: {ticket} is corrupted: ")
  assert not (tmp_path / "out").exists() and not (tmp_path / "ticket.pth").exists()


def _mount_tmpfs(path, megabytes: int):
  path.mkdir()
  done = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
      capture_output=True,
      text=True,
  )
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs to fill ({done.stderr.strip()}): needs root")


def test_a_full_disk_stops_the_run_by_name_and_a_restart_after_freeing_it_resumes(
    shared, uninterrupted, tmp_path
):
  """A real full filesystem: a small tmpfs, filled up right after a checkpoint save."""
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, 32)
  try:
    workdir, filler = disk / "run", disk / "filler"
    step = STEPS_PER_ROUND + 6  # round 1, step 6: the next save (step 9) meets a full disk
    done = _run(shared, workdir, fault=("fill", str(step)), env={"FILLER": str(filler)})
    last = _one_error_line(done, f"error: could not write {workdir}/")
    assert "ENOSPC: No space left on device" in last, last
    # What was saved before is whole: every ticket and the last checkpoint.
    assert checkpointing.ticket_indices(str(workdir)) == [0]
    checkpointing.restore_ticket(str(workdir), 0)
    assert train_checkpoints.TrainCheckpoints(str(workdir)).latest_meta()["step"] == step
    filler.unlink()
    done = _run(shared, workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming round 1 at step 6 of {STEPS_PER_ROUND}" in done.stderr
    _assert_same_tickets(uninterrupted, workdir)
  finally:
    subprocess.run(["umount", str(disk)], check=False)

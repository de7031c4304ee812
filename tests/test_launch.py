"""Two local processes run one job (gloo over 127.0.0.1); one restores it; one is lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import DEMO_EVALUATIONS, TINY
from mirl_jax import checkpointing
from mirl_jax import train_checkpoints
from mirl_jax import masks as masks_lib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import local  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.slow  # whole runs of the CLI in child processes


# tiny_config's global batch of 4: 2 per process; 24 steps in round 0.
ARGS = [
    "--config=tests/tiny_config.py",
    "--config.train.checkpoint_every_steps=4",
    "--config.lottery.rounds=0",
    "--heartbeat_timeout=10",
]


@pytest.fixture(scope="module", autouse=True)
def shared_data(tmp_path_factory):
  """One demo dataset for every run of this module."""
  shared = tmp_path_factory.mktemp("shared")
  ARGS.extend(
      [
          f"--config.data.manual_dir={shared / 'demo' / 'raw'}",
          f"--config.data.data_dir={shared / 'demo' / 'tfds'}",
      ]
  )
  yield
  del ARGS[-2:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert local.launch(2, [*ARGS, f"--workdir={workdir}"]) == 0
  finally:
    os.chdir(cwd)
  return workdir


def test_two_processes_train_and_one_restores(two_process_run):
  tmp_path = two_process_run
  assert checkpointing.ticket_indices(str(tmp_path)) == [0]
  meta = train_checkpoints.TrainCheckpoints(str(tmp_path)).latest_meta()
  assert meta["round"] == 0 and meta["step_in_round"] % 4 == 0
  params, masks, _ = checkpointing.restore_ticket(str(tmp_path), model=TINY)
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
  assert all(np.all(m) for m in jax.tree.leaves(masks))  # round 0: dense
  # Process 0 reported the ticket it saved: one entry, its counts, every test set scored.
  (entry,) = json.loads((tmp_path / "summary.json").read_text())
  counts = masks_lib.count(params, masks)
  assert entry["round"] == 0 and entry["remaining"] == 1.0
  assert (entry["params"], entry["nonzero"]) == (counts["params"], counts["nonzero"])
  assert set(entry["results"]) == DEMO_EVALUATIONS
  assert all(np.isfinite(v) for m in entry["results"].values() for v in m.values())


def _run(workdir, logs):
  """Starts both processes, each with its stderr in its own file of `logs`."""
  files = [open(log, "w") for log in logs]  # pylint: disable=consider-using-with
  procs = local.start(
      2, [*ARGS, f"--workdir={workdir}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderrs=files
  )
  return procs, files


def test_a_lost_process_stops_the_other_which_names_it_and_a_restart_ends_identical(
    two_process_run, tmp_path
):
  """SIGKILL of process 1 mid-round, then a restart of both.

  (Process 0 lost takes the coordination service with it: JAX's client then
  aborts the other at once, with its own message about the "leader task"; the
  README says so.)
  """
  workdir = tmp_path / "run"
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs, files = _run(workdir, logs)
  deadline = time.monotonic() + 600
  while not (workdir / "checkpoints" / "8").is_dir():
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  code = procs[0].wait(timeout=180)
  waited = time.monotonic() - killed
  procs[1].wait()
  for f in files:
    f.close()
  stderr = logs[0].read_text()
  assert waited < 120 and code == 1, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]  # one line that names the lost process
  assert last.startswith("error: lost process 1 of 2 (host "), stderr[-2000:]
  assert "no heartbeat for" in last
  assert "Traceback" not in stderr and "Check failure" not in stderr

  logs = [tmp_path / f"restart_process_{i}.log" for i in range(2)]
  procs, files = _run(workdir, logs)
  codes = [p.wait(timeout=600) for p in procs]
  for f in files:
    f.close()
  assert codes == [0, 0], logs[0].read_text()[-2000:]
  assert "Resuming round 0 at step 8 of 24" in logs[0].read_text()
  want = checkpointing.restore_ticket(str(two_process_run), 0)
  got = checkpointing.restore_ticket(str(workdir), 0)
  for a, b in zip(jax.tree.leaves(want[:2]), jax.tree.leaves(got[:2])):
    np.testing.assert_array_equal(a, b)

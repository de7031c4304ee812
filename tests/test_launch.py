"""Two local processes run one job (gloo over 127.0.0.1); one process restores it."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import DEMO_EVALUATIONS, TINY
from mirl_jax import checkpointing
from mirl_jax import masks as masks_lib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import local  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.slow  # whole runs of the CLI in child processes


def test_two_processes_train_and_one_restores(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  code = local.launch(
      2,
      [  # tiny_config's global batch of 4: 2 per process
          "--config=tests/tiny_config.py",
          f"--workdir={tmp_path}",
          "--config.train.checkpoint_every_steps=4",
          "--config.lottery.rounds=0",
      ],
  )
  assert code == 0
  assert checkpointing.ticket_indices(str(tmp_path)) == [0]
  meta = checkpointing.TrainCheckpoints(str(tmp_path)).latest_meta()
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

"""Two local processes run one job (gloo over 127.0.0.1); one process restores it."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mirl_jax import checkpointing
from mirl_jax import models

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import local  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.slow  # whole runs of the CLI in child processes

TINY = dict(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1),
            prompt_dims=(4, 4, 4), prompt_sizes=(4, 4, 4), noise_level_heads=1)


def test_two_processes_train_and_one_restores(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  model_flags = [f"--config.model.{k}={v}".replace(" ", "") for k, v in TINY.items()]
  code = local.launch(2, [
      "--config=configs/demo.py", f"--workdir={tmp_path}", *model_flags,
      "--config.data.patch_size=16", "--config.data.batch_size=4",  # global: 2 per process
      "--config.data.repeats.denoise=1", "--config.data.repeats.derain=1",
      "--config.data.repeats.dehaze=1", "--config.train.epochs=2",
      "--config.train.checkpoint_every_steps=4", "--config.lottery.rounds=0"])
  assert code == 0
  assert checkpointing.ticket_indices(str(tmp_path)) == [0]
  meta = checkpointing.TrainCheckpoints(str(tmp_path)).latest_meta()
  assert meta["round"] == 0 and meta["step_in_round"] % 4 == 0
  params, masks, _ = checkpointing.restore_ticket(str(tmp_path), model=models.PromptIR(**TINY))
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
  assert all(np.all(m) for m in jax.tree.leaves(masks))  # round 0: dense
  assert (tmp_path / "summary.json").exists()

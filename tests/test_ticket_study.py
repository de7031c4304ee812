"""The winning-ticket study on a tiny net: every variant of every seed, the controls' masks,
resumption. Its reports' numbers are checked in test_study_reports.py."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags

from conftest import DEMO_EVALUATIONS
from mirl_jax import checkpointing
from mirl_jax import study_reports
from mirl_jax import ticket_study
from mirl_jax import train
from mirl_jax.study_reports import CONTROLS, IMP
from tiny_config import get_config as tiny_config

pytestmark = pytest.mark.slow  # ten trainings of the tiny net

SEEDS = (0, 1)


def _config():
  config = tiny_config()
  config.train.update(
      dict(epochs=1, warmup_epochs=0, lr_per_epoch=False, checkpoint_every_steps=1000)
  )
  config.lottery.rounds = 1
  config.study = ml_collections.ConfigDict(dict(seeds=SEEDS, control_rounds=(1,)))
  return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  flags.FLAGS.mark_as_parsed()
  workdir = tmp_path_factory.mktemp("study")
  ticket_study.Study(_config(), str(workdir)).run()
  return workdir


def _ticket(workdir, seed, variant, r):
  return checkpointing.restore_ticket(str(workdir / f"seed_{seed}" / variant), r)[:2]


def _alive(masks):
  return sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks))


def test_every_variant_of_every_seed_is_recorded(study):
  records = json.loads((study / "study.json").read_text())
  got = {(e["variant"], e["seed"], e["round"]) for e in records}
  want = {("dense", s, 0) for s in SEEDS} | {(v, s, 1) for v in (IMP,) + CONTROLS for s in SEEDS}
  assert got == want and len(records) == len(want)
  for e in records:
    assert set(e) >= {"variant", "seed", "round", "remaining", "psnr", "input_psnr", "psnr_mean"}
    assert set(e["psnr"]) == set(e["input_psnr"]) == DEMO_EVALUATIONS
    assert e["psnr_mean"] == pytest.approx(np.mean(list(e["psnr"].values())))
    assert e["remaining"] == (1.0 if e["round"] == 0 else pytest.approx(0.8, abs=0.01))
    summary = json.loads(
        (
            study / f"seed_{e['seed']}" / e["variant"].replace("dense", IMP) / "summary.json"
        ).read_text()
    )
    found = next(s for s in summary if s["round"] == e["round"])
    assert e["psnr"] == {k: m["psnr"] for k, m in found["results"].items()}
    assert e["loss_change_over_last_20pct"] == found["loss_change_over_last_20pct"]
  assert (study / "study.md").read_text().startswith("# Winning-ticket study")
  assert (study / "study.png").stat().st_size > 0  # its content: test_study_reports.py


def test_a_seed_sets_the_init_and_the_data_order(study):
  first, second = (_ticket(study, s, IMP, 1) for s in SEEDS)
  assert not np.array_equal(jax.tree.leaves(first[1])[0], jax.tree.leaves(second[1])[0])
  records = json.loads((study / "study.json").read_text())
  dense = [study_reports.find(records, "dense", s, 0)["psnr_mean"] for s in SEEDS]
  assert dense[0] != dense[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_controls_masks(study, seed):
  imp_params, imp_masks = _ticket(study, seed, IMP, 1)
  alive = _alive(imp_masks)
  reinit, random, oneshot = (_ticket(study, seed, v, 1) for v in CONTROLS)
  for a, b in zip(jax.tree.leaves(imp_masks), jax.tree.leaves(reinit[1])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(jax.tree.leaves(imp_params)[0], jax.tree.leaves(reinit[0])[0])
  assert _alive(random[1]) == alive and _alive(oneshot[1]) == alive
  assert any(
      not np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(imp_masks), jax.tree.leaves(random[1]))
  )
  with_none = jax.tree.leaves(random[1], is_leaf=lambda x: x is None)
  for p, m in zip(jax.tree.leaves(random[0]), with_none):  # pruned weights stay 0
    assert m is None or np.all(np.asarray(p)[~np.asarray(m)] == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_shot_to_the_first_level_is_imp_round_one(study, seed):
  """One 20% prune of the dense net is IMP's first round: same masks, init, data, result."""
  imp, oneshot = _ticket(study, seed, IMP, 1), _ticket(study, seed, "oneshot", 1)
  for a, b in zip(jax.tree.leaves(imp), jax.tree.leaves(oneshot)):
    np.testing.assert_array_equal(a, b)


def test_a_rerun_skips_finished_work(study, monkeypatch):
  def no_training(*args, **kwargs):
    raise AssertionError("a finished training ran again")

  monkeypatch.setattr(train.Run, "train_round", no_training)
  path = study / "study.json"
  before = json.loads(path.read_text())
  dropped = [e for e in before if (e["variant"], e["seed"]) not in {("oneshot", 1), ("dense", 0)}]
  path.write_text(json.dumps(dropped))  # trained, not yet recorded
  ticket_study.Study(_config(), str(study)).run()
  after = json.loads(path.read_text())
  key = lambda e: (e["variant"], e["seed"], e["round"])
  assert sorted(map(key, after)) == sorted(map(key, before))
  for a, b in zip(sorted(before, key=key), sorted(after, key=key)):
    assert a["psnr"] == pytest.approx(b["psnr"])


def test_control_rounds_outside_the_run_are_refused():
  config = _config()
  config.study.control_rounds = (0, 1)
  with pytest.raises(ValueError, match=r"study.control_rounds=\(0, 1\).*lottery.rounds=1"):
    ticket_study.control_rounds(config)

"""The winning-ticket study on a tiny net: every variant at every level, reports, resumption."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from PIL import Image

from mirl_jax import checkpointing
from mirl_jax import masks as masks_lib
from mirl_jax import ticket_study
from mirl_jax import train
from tiny_config import get_config as tiny_config

pytestmark = pytest.mark.slow  # whole runs of the CLI in child processes

TASKS = {
    "denoise_15/DemoClean",
    "denoise_25/DemoClean",
    "denoise_50/DemoClean",
    "derain/DemoRain",
    "dehaze/DemoHaze",
}


def _config():
  config = tiny_config()
  config.train.update(
      dict(
          epochs=1,
          warmup_epochs=0,
          lr_per_epoch=False,  # trains at once
          checkpoint_every_steps=1000,
      )
  )
  config.lottery.rounds = 2
  config.study = ml_collections.ConfigDict(dict(every=1))
  return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  flags.FLAGS.mark_as_parsed()
  workdir = tmp_path_factory.mktemp("study")
  ticket_study.Study(_config(), str(workdir)).run()
  return workdir


def _ticket(workdir, variant, r):
  return checkpointing.restore_ticket(str(workdir / variant), r)[:2]


def _alive(masks):
  return sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks))


def test_every_variant_at_every_level(study):
  entries = json.loads((study / "study.json").read_text())
  assert ticket_study.levels(_config()) == [1, 2]
  got = {(e["variant"], e["round"]) for e in entries}
  assert got == {("imp", r) for r in (0, 1, 2)} | {
      (v, r) for v in ticket_study.CONTROLS for r in (1, 2)
  }
  for r in (1, 2):
    level = [e for e in entries if e["round"] == r]
    assert len({e["remaining"] for e in level}) == 1 and len({e["alive"] for e in level}) == 1
    assert 0.8**r - 0.01 < level[0]["remaining"] < 0.8**r + 0.01
  for e in entries:
    assert set(e["psnr"]) == TASKS and all(np.isfinite(list(e["psnr"].values())))
    assert e["mean_psnr"] == pytest.approx(np.mean(list(e["psnr"].values())))
  _assert_study_md((study / "study.md").read_text(), entries)
  with Image.open(study / "study.png") as image:
    assert image.size == (770, 495)  # 7 x 4.5 inches at 110 dpi
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
  assert len(np.unique(pixels, axis=0)) > 2  # not blank: drawn on


def _assert_study_md(text, entries):
  """A row per level with each variant's mean PSNR (— where it did not train), then a row
  per training with its PSNR per task: the numbers of study.json."""
  rows = [
      [c.strip() for c in line.strip("|").split("|")]
      for line in text.splitlines()
      if line.startswith("|") and "---" not in line
  ]
  labels = [ticket_study.LABELS[v] for v in ticket_study.VARIANTS]
  assert rows[0] == ["round", "remaining %", "input"] + labels
  find = {(e["variant"], e["round"]): e for e in entries}
  for r in (0, 1, 2):
    imp = find["imp", r]
    assert rows[1 + r] == [
        str(r),
        f"{100 * imp['remaining']:.2f}",
        f"{imp['mean_input_psnr']:.2f}",
    ] + [f"{find[v, r]['mean_psnr']:.2f}" if (v, r) in find else "—" for v in ticket_study.VARIANTS]
  tasks = rows[4][3:-1]
  assert rows[4] == ["round", "remaining %", "variant"] + tasks + ["mean"]
  assert set(tasks) == TASKS and rows[5][2] == "input"
  trainings = {(row[2], row[0]): row for row in rows[6:]}
  assert len(trainings) == len(rows[6:]) == len(entries)
  for e in entries:
    row = trainings[ticket_study.LABELS[e["variant"]], str(e["round"])]
    assert row[3:] == [f"{e['psnr'][t]:.2f}" for t in tasks] + [f"{e['mean_psnr']:.2f}"]


def test_the_controls_masks(study):
  for r in (1, 2):
    imp_params, imp_masks = _ticket(study, "imp", r)
    alive = _alive(imp_masks)
    same, other = _ticket(study, "random_init", r), _ticket(study, "random_prune", r)
    one_shot = _ticket(study, "one_shot", r)
    for a, b in zip(jax.tree.leaves(imp_masks), jax.tree.leaves(same[1])):
      np.testing.assert_array_equal(a, b)
    assert _alive(other[1]) == alive and _alive(one_shot[1]) == alive
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(imp_masks), jax.tree.leaves(other[1]))
    )
    with_none = jax.tree.leaves(other[1], is_leaf=lambda x: x is None)
    for p, m in zip(jax.tree.leaves(other[0]), with_none):  # pruned weights stay 0
      assert m is None or np.all(np.asarray(p)[~np.asarray(m)] == 0)
    assert not np.array_equal(jax.tree.leaves(imp_params)[0], jax.tree.leaves(same[0])[0])


def test_one_shot_to_the_first_level_is_imp_round_one(study):
  """One 20% prune of the dense net is IMP's first round: same masks, init, data, result."""
  imp, one_shot = _ticket(study, "imp", 1), _ticket(study, "one_shot", 1)
  for a, b in zip(jax.tree.leaves(imp), jax.tree.leaves(one_shot)):
    np.testing.assert_array_equal(a, b)


def test_a_rerun_skips_finished_work(study, monkeypatch):
  def no_training(*args, **kwargs):
    raise AssertionError("a finished training ran again")

  monkeypatch.setattr(train.Run, "train_round", no_training)
  path = study / "study.json"
  before = json.loads(path.read_text())
  path.write_text(
      json.dumps([e for e in before if e["variant"] != "one_shot" or e["round"] != 2])
  )  # trained, not yet recorded
  ticket_study.Study(_config(), str(study)).run()
  after = json.loads(path.read_text())
  key = lambda e: (e["variant"], e["round"])
  assert sorted(map(key, after)) == sorted(map(key, before))
  for a, b in zip(sorted(before, key=key), sorted(after, key=key)):
    assert a["psnr"] == pytest.approx(b["psnr"])

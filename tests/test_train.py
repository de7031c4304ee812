"""A whole (tiny) IMP run, and one interrupted mid-round that resumes to the same end."""

import hashlib
import json
import shutil
import subprocess
import sys
import types
import zlib

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from conftest import DEMO_EVALUATIONS, ROOT, tensorboard_scalars
from mirl_jax import checkpointing
from mirl_jax import train_checkpoints
from mirl_jax import models
from mirl_jax import masks as masks_lib
from mirl_jax import train
from tiny_config import get_config as _config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  flags.FLAGS.mark_as_parsed()
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(_config(), str(workdir))
  return workdir


@pytest.mark.slow
def test_a_run_leaves_tickets_reports_and_logs(finished):
  assert checkpointing.ticket_indices(str(finished)) == [0, 1]
  _, masks0, _ = checkpointing.restore_ticket(str(finished), 0)
  params1, masks1, meta1 = checkpointing.restore_ticket(str(finished), 1)
  assert all(np.all(m) for m in jax.tree.leaves(masks0))  # round 0 is dense
  assert 0.79 < meta1["remaining"] < 0.81  # 20% of the survivors pruned
  with_none = jax.tree.leaves(masks1, is_leaf=lambda x: x is None)
  for p, m in zip(jax.tree.leaves(params1), with_none):
    assert m is None or np.all(np.asarray(p)[~np.asarray(m)] == 0)
  summary = json.loads((finished / "summary.json").read_text())
  assert [e["round"] for e in summary] == [0, 1]
  for entry in summary:
    assert set(entry["results"]) == DEMO_EVALUATIONS
    for metrics in entry["results"].values():
      assert set(metrics) == {"psnr", "ssim", "input_psnr", "input_ssim"}
      assert all(np.isfinite(v) for v in metrics.values())
  _assert_reports(finished, summary, masks_lib.count(params1, masks1))


@pytest.mark.slow
def test_evaluate_mode_remakes_a_rounds_reports_as_training_wrote_them(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  written = ["eval/round_01.md", "eval/round_01.json", "sparsity/round_01.txt"]
  for name in (*written, "samples_round_01.png", "psnr_vs_remaining.png"):  # remade below
    (workdir / name).unlink()
  _cli(
      ROOT / "tests" / "tiny_config.py",
      workdir,
      "--mode=evaluate",
      "--config.eval.ticket=1",
      "--config.eval.save_images=True",
  )

  # The child runs with the CLI's XLA flags, the run with the tests': the metrics agree to
  # rounding, the sparsity table (counts only) to the byte.
  sparsity = "sparsity/round_01.txt"
  assert (workdir / sparsity).read_bytes() == (finished / sparsity).read_bytes()
  for name in ("eval/round_01.json", "summary.json"):
    remade, trained = (json.loads((run / name).read_text()) for run in (workdir, finished))
    assert _leaves(remade).keys() == _leaves(trained).keys(), name
    for path, value in _leaves(trained).items():
      assert _leaves(remade)[path] == pytest.approx(value, abs=1e-3), (name, path)
  remade, trained = (
      (run / "eval/round_01.md").read_text().splitlines() for run in (workdir, finished)
  )
  assert remade[:4] == trained[:4] and len(remade) == len(trained)  # title, header: same rows
  _image(workdir / "samples_round_01.png")
  _image(workdir / "psnr_vs_remaining.png")
  restored = sorted((workdir / "eval" / "round_01").rglob("*.png"))
  tested = json.loads((finished / "eval/round_01.json").read_text())
  assert len(restored) == sum(e["images"] for e in tested["results"])


def _cli(config, workdir, *args) -> None:
  """The CLI in a child process: main's flags would clash with ticket_study's in this one."""
  command = ["-m", "mirl_jax.main", "--config", str(config), "--workdir", str(workdir), *args]
  done = subprocess.run(
      [sys.executable, *command], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False
  )
  assert done.returncode == 0, done.stderr[-3000:]


def _leaves(tree, path="") -> dict:
  """{path: value} of a JSON tree, lists indexed."""
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{path}/{key}").items()}
  if isinstance(tree, list):
    return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{path}/{i}").items()}
  return {path: tree}


def _image(path) -> np.ndarray:
  with Image.open(path) as image:
    assert image.mode in ("RGB", "RGBA"), (path, image.mode)
    pixels = np.asarray(image.convert("RGB"))
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2, path  # not blank: drawn on
  return pixels


def _assert_reports(workdir, summary, counts):
  """What round 1 left for a reader: the plot, the samples, its tables and scalars."""
  plot = _image(workdir / "psnr_vs_remaining.png")
  assert plot.shape == (495, 770, 3)  # 7 x 4.5 inches at 110 dpi
  _image(workdir / "learning_curve.png")  # its content: test_loss_curve.py
  for entry in summary:
    curve = json.loads((workdir / "loss" / f"round_{entry['round']:02d}.json").read_text())
    assert curve["curve"][-1][0] == curve["steps"] and len(curve["curve"]) >= 2
    assert entry["loss_change_over_last_20pct"] == curve["change_over_last_20pct"]
  samples = _image(workdir / "samples_round_01.png")  # its labels: test_reports.py
  rows = len(summary[1]["results"])  # a row per test set, three 2.2-inch tiles at 110 dpi
  assert samples.shape[1] == round(3 * 2.2 * 110) and samples.shape[0] > rows * 150

  # The evaluation table: a row per test set, the numbers of summary.json.
  lines = (workdir / "eval" / "round_01.md").read_text().splitlines()
  assert lines[0] == "# Evaluation: round_01"
  rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in lines[4:]}
  for name, m in summary[1]["results"].items():
    degradation, dataset = name.split("/")
    assert any(
        row[:2] == (degradation, dataset)
        and row[3:]
        == (
            f"{m['psnr']:.2f}",
            f"{m['ssim']:.4f}",
            f"{m['input_psnr']:.2f}",
            f"{m['input_ssim']:.4f}",
        )
        for row in rows
    ), (name, rows)
  assert len(rows) == len(summary[1]["results"]) + 1  # and the average

  # The sparsity table's total row: the ticket's counts.
  total = (workdir / "sparsity" / "round_01.txt").read_text().splitlines()[-1]
  alive = counts["params"] - counts["prunable"] + counts["alive"]
  assert total.replace(",", "").split() == [
      "total",
      str(counts["params"]),
      str(counts["prunable"]),
      str(alive),
      f"{100 * counts['remaining']:.2f}%",
      f"{counts['params'] / alive:.2f}x",
  ]

  # TensorBoard: the loss of every logged step, each round's remaining weights and PSNRs.
  want = {
      f"eval/{name}/{k}": {e["round"] for e in summary}
      for name in summary[0]["results"]
      for k in ("psnr", "ssim")
  }
  scalars = tensorboard_scalars(workdir / "tensorboard")  # on disk once a round is reported
  for tag, steps in want.items():
    assert set(scalars.get(tag, ())) == steps, (tag, scalars.get(tag))
  assert scalars["sparsity/remaining"] == pytest.approx(
      {e["round"]: e["remaining"] for e in summary}
  )
  for name in summary[0]["results"]:
    assert scalars[f"eval/{name}/psnr"] == pytest.approx(
        {e["round"]: e["results"][name]["psnr"] for e in summary}
    )
  assert len(scalars["train/loss"]) >= 2 and all(np.isfinite(list(scalars["train/loss"].values())))


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_tickets(finished, tmp_path, monkeypatch):
  save = train_checkpoints.TrainCheckpoints.save

  class Preempted(Exception):
    pass

  def save_then_stop(self, step, state, masks, iterator, meta):
    save(self, step, state, masks, iterator, meta)
    if meta["round"] == 1:
      raise Preempted

  monkeypatch.setattr(train_checkpoints.TrainCheckpoints, "save", save_then_stop)
  with pytest.raises(Preempted):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert checkpointing.ticket_indices(str(tmp_path)) == [0]
  monkeypatch.setattr(train_checkpoints.TrainCheckpoints, "save", save)
  train.train_and_evaluate(_config(), str(tmp_path))  # resumes mid-round 1

  for name in ("round_00.json", "round_01.json"):  # round 1's curve spans the restart
    curves = [
        json.loads((run / "loss" / name).read_text())["curve"] for run in (finished, tmp_path)
    ]
    assert curves[0] == curves[1]
  for index in (0, 1):
    want = checkpointing.restore_ticket(str(finished), index)
    got = checkpointing.restore_ticket(str(tmp_path), index)
    for a, b in zip(jax.tree.leaves(want[:2]), jax.tree.leaves(got[:2])):
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_demo_round_in_bfloat16_loses_at_most_0_3_db_to_float32(tmp_path):
  """Mixed precision (bf16 compute, float32 params, optimizer state and loss) trains as well.

  The demo network's dense round on blind denoising (configs/ticket_study.py), where it
  converges: the three float32 seeds of the published study end within 0.14 dB there, while
  the five-task demo, still learning, moved by 0.17-0.7 dB with rounding alone, and would
  measure that noise. float32's side is the study's own seed-0 record, trained by the same
  config on the same test images (checked by their input PSNRs).
  """
  from configs import ticket_study  # pylint: disable=import-outside-toplevel

  flags.FLAGS.mark_as_parsed()
  records = json.loads((ROOT / "benchmarks" / "results" / "ticket_study.json").read_text())
  float32 = next(r for r in records if r["variant"] == "dense" and r["seed"] == 0)
  config = ticket_study.get_config()
  del config["study"]
  config.seed = 0
  config.model.dtype = "bfloat16"
  config.lottery.rounds = 0  # the dense round only
  config.data.update(manual_dir=str(tmp_path / "raw"), data_dir=str(tmp_path / "tfds"))
  train.train_and_evaluate(config, str(tmp_path / "bfloat16"))
  results = json.loads((tmp_path / "bfloat16" / "summary.json").read_text())[0]["results"]
  assert {name: m["input_psnr"] for name, m in results.items()} == pytest.approx(
      float32["input_psnr"], abs=1e-4
  )
  psnr = np.mean([m["psnr"] for m in results.values()])
  assert psnr > float32["input_psnr_mean"] + 2, psnr
  assert psnr >= float32["psnr_mean"] - 0.3, (psnr, float32["psnr_mean"])


def _perturb(r, params, masks):
  """A stand-in for training: moves every weight, keeps pruned ones at 0."""
  rng = np.random.default_rng(100 + r)
  moved = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), params)
  return jax.tree.map(
      lambda p, m: p if m is None else np.where(m, p, 0), moved, masks, is_leaf=lambda x: x is None
  )


def _no_data(config):
  """A Trainer's stand-in for a stubbed training: the model alone."""
  return types.SimpleNamespace(model=models.PromptIR(**config.model))


def _stub_training(monkeypatch, events):
  """Run.train_round and Run.report without data: the loop alone, in order."""

  def train_round(self, r, params, masks):
    events.append(("train", r))
    return _perturb(r, params, masks)

  monkeypatch.setattr(train.Run, "train_round", train_round)
  monkeypatch.setattr(train.Run, "report", lambda self, r, p, m: events.append(("report", r)))


def test_the_loop_prunes_rewinds_trains_saves_and_reports_each_round(tmp_path, monkeypatch):
  events = []
  _stub_training(monkeypatch, events)
  config = _config()
  config.lottery.rounds = 4
  run = train.Run(config, str(tmp_path), trainer=_no_data(config))  # no data: training is stubbed
  last = run.train()
  assert events == [(kind, r) for r in range(5) for kind in ("train", "report")]
  assert checkpointing.ticket_indices(str(tmp_path)) == [0, 1, 2, 3, 4]
  init = run.init_params()
  previous = None
  for r in range(5):
    ticket = checkpointing.restore_ticket(str(tmp_path), r)
    assert ticket.meta["remaining"] == pytest.approx(0.8**r, rel=0.01)
    masks = jax.tree.leaves(ticket.masks)
    if previous is not None:  # masks only shrink, pruned weights stay exactly 0
      assert all(not (m & ~p).any() for m, p in zip(masks, previous))
    previous = masks
  for p, m in zip(
      jax.tree.leaves(last.params), jax.tree.leaves(last.masks, is_leaf=lambda x: x is None)
  ):
    assert m is None or not np.asarray(p)[~m].any()
  # Round 4 started from the survivors of theta_0: its training is the only change.
  rewound = jax.tree.map(
      lambda t, m: t if m is None else np.where(m, t, 0),
      init,
      last.masks,
      is_leaf=lambda x: x is None,
  )
  for a, b in zip(jax.tree.leaves(last.params), jax.tree.leaves(_perturb(4, rewound, last.masks))):
    np.testing.assert_array_equal(a, b)

  # A run stopped after round 2 and resumed ends with the same tickets.
  config.lottery.rounds = 2
  train.Run(config, str(tmp_path / "resumed"), trainer=_no_data(config)).train()
  config.lottery.rounds = 4
  events.clear()
  train.Run(config, str(tmp_path / "resumed"), trainer=_no_data(config)).train()
  # The stub wrote no summary.json: the resume reports rounds 0-2 first, as it does for a
  # run stopped between a ticket and its reports.
  assert events == [
      ("report", 0),
      ("report", 1),
      ("report", 2),
      ("train", 3),
      ("report", 3),
      ("train", 4),
      ("report", 4),
  ]
  again = checkpointing.restore_ticket(str(tmp_path / "resumed"), 4)
  for a, b in zip(
      jax.tree.leaves((again.params, again.masks)), jax.tree.leaves((last.params, last.masks))
  ):
    np.testing.assert_array_equal(a, b)


def _mask_digests(workdir) -> dict[str, str]:
  """sha256 of each ticket's masks, every array in path order, with its path."""
  digests = {}
  for index in checkpointing.ticket_indices(str(workdir)):
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves_with_path(
        checkpointing.restore_ticket(str(workdir), index).masks
    )
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
      digest.update(f"{index}/masks/{jax.tree_util.keystr(path)}".encode())
      digest.update(np.ascontiguousarray(leaf).tobytes())
    digests[f"{index}/masks"] = digest.hexdigest()
  return digests


def params_sketch(params) -> dict[str, list[float]]:
  """Each leaf's L2 norm and its projection on a fixed random unit direction, in path order.

  XLA:CPU rounds by host CPU and by how it fuses the step: a step that fused otherwise moved the
  frozen tiny config's sketch by at most 5e-6 of a leaf's norm, while training without weight
  decay moved it by 2e-2 (dense ticket) to 2e-1 (second round) at the worst leaf."""
  sketch = {}
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    key = jax.tree_util.keystr(path)
    x = np.asarray(leaf, np.float64).ravel()
    direction = np.random.default_rng(zlib.crc32(key.encode())).standard_normal(x.size)
    sketch[key] = [float(np.linalg.norm(x)), float(x @ direction / np.linalg.norm(direction))]
  return sketch


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["init", "late"])
def test_tickets_are_those_of_the_loop_before_its_rewrite(tmp_path, variant):
  """The IMP loop was rewritten (Trainer and Run, no callbacks) to do the same: tickets of the
  frozen tiny config, rewound to init or late with kept prompts, against those of the code before
  (tests/data/loop_rewrite_tickets.json). The masks are bit-identical to aaaba8f's. The params
  are compared by their sketch (params_sketch) within 2e-4 of each leaf's norm, as the loop made
  them once its params' hashes had matched aaaba8f's, so that rounding (host CPU, XLA fusion)
  passes and a change of training does not."""
  recorded = json.loads((ROOT / "tests" / "data" / "loop_rewrite_tickets.json").read_text())
  _cli(f"{ROOT / 'tests' / 'frozen_tiny_config.py'}:{variant}", tmp_path)
  assert _mask_digests(tmp_path) == recorded["masks"][variant]
  sketches = recorded["params_sketch"]
  assert checkpointing.ticket_indices(str(tmp_path)) == [int(i) for i in sketches[variant]]
  for index, expected in sketches[variant].items():
    got = params_sketch(checkpointing.restore_ticket(str(tmp_path), int(index)).params)
    assert list(got) == sketches["leaves"]
    off = {
        f"{index}{key}": np.abs(np.subtract(got[key], want)).max() / want[0]
        for key, want in zip(sketches["leaves"], expected)
    }
    worst = max(off, key=off.get)
    assert off[worst] <= 2e-4, f"{worst} moved {off[worst]:.2e} of its norm"

"""The study's records, IMP's lead with its paired test, study.md and study.png, from records
made up here, so that every number in the reports can be checked against them; and the
published study (benchmarks/results, the README) against its own records."""

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from mirl_jax import study_reports
from mirl_jax.study_reports import CONTROLS, IMP

SETS = ("denoise_15/DemoClean", "derain/DemoRain")
INPUT = {"denoise_15/DemoClean": 24.0, "derain/DemoRain": 20.0}


def _summary(r: int, psnr: dict) -> dict:
  """A summary.json entry (reports.summary_entry) of round r."""
  results = {s: dict(psnr=psnr[s], ssim=0.5, input_psnr=INPUT[s], input_ssim=0.4) for s in SETS}
  return dict(round=r, remaining=0.8**r, nonzero=1, params=1, results=results)


def _records(tmp_path, seeds=(0, 1, 2)) -> list[dict]:
  """Round 0 dense, round 1 IMP and the controls: IMP ahead of reinit by 1 dB +- seed noise,
  level with random, behind oneshot on one seed only."""
  rng = np.random.default_rng(0)
  records = []
  for seed in seeds:
    base = 25 + rng.normal(0, 0.5)
    offsets = {"dense": 0.5, IMP: 0.0, "reinit": -1.0 + rng.normal(0, 0.05)}
    offsets.update(random=rng.normal(0, 0.3), oneshot=-0.2 if seed else 0.3)
    for variant, offset in offsets.items():
      r = 0 if variant == "dense" else 1
      psnr = {s: base + offset + i for i, s in enumerate(SETS)}
      entry = study_reports.record_of(variant, seed, _summary(r, psnr), 1.0)
      records = study_reports.record(str(tmp_path), entry)
  return records


def test_a_record_has_the_fields_a_reader_expects(tmp_path):
  entry = study_reports.record_of("oneshot", 2, _summary(1, {SETS[0]: 26.0, SETS[1]: 21.0}), 3.0)
  assert entry == dict(
      variant="oneshot",
      seed=2,
      round=1,
      remaining=0.8,
      psnr={SETS[0]: 26.0, SETS[1]: 21.0},
      input_psnr=INPUT,
      psnr_mean=23.5,
      input_psnr_mean=22.0,
      loss_change_over_last_20pct=None,  # trained before loss curves were kept
      seconds=3.0,
  )


def test_records_are_kept_one_per_training_in_order(tmp_path):
  records = _records(tmp_path)
  assert len(records) == 3 * 5
  again = study_reports.record_of("random", 1, _summary(1, {SETS[0]: 1.0, SETS[1]: 2.0}), None)
  records = study_reports.record(str(tmp_path), again)  # replaces, adds nothing
  assert len(records) == 15 and study_reports.find(records, "random", 1, 1) == again
  assert records == json.loads((tmp_path / "study.json").read_text())
  assert [(e["round"], e["variant"]) for e in records[:4]] == [(0, "dense")] * 3 + [(1, IMP)]


def test_imps_lead_is_a_paired_t_test_over_seeds(tmp_path):
  records = _records(tmp_path)
  for control in CONTROLS:
    imp = [study_reports.find(records, IMP, s, 1)["psnr_mean"] for s in (0, 1, 2)]
    other = [study_reports.find(records, control, s, 1)["psnr_mean"] for s in (0, 1, 2)]
    diff = np.subtract(imp, other)
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(3))
    got = study_reports.lead(records, control, 1)
    assert got["mean"] == pytest.approx(diff.mean()) and got["seeds"] == 3
    assert got["std"] == pytest.approx(diff.std(ddof=1))
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
  assert study_reports.lead(records, "reinit", 1)["p"] < 0.05  # 1 dB ahead on every seed
  assert study_reports.lead(records, "oneshot", 1)["p"] > 0.05  # behind on one seed
  assert study_reports.lead(_records(tmp_path / "one", seeds=(0,)), "reinit", 1) is None


def _table(text: str, heading: str) -> list[list[str]]:
  section = text.split(heading, 1)[1].split("\n## ", 1)[0]
  return [
      [c.strip() for c in line.strip("|").split("|")]
      for line in section.splitlines()
      if line.startswith("|") and "---" not in line
  ]


def test_study_md_shows_means_stds_and_leads_of_the_records(tmp_path):
  records = _records(tmp_path)
  config = ml_collections.ConfigDict(
      dict(lottery=dict(rounds=1), study=dict(control_rounds=(1,)), train=dict(epochs=6))
  )
  study_reports.write_markdown(str(tmp_path), records, config)
  text = (tmp_path / "study.md").read_text()

  def cell(values):
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"

  means = _table(text, "# Winning-ticket study")
  labels = [study_reports.LABELS[v] for v in (IMP,) + CONTROLS]
  assert means[0] == ["round", "remaining %", "input"] + labels
  dense = [e["psnr_mean"] for e in records if e["variant"] == "dense"]
  assert means[1] == ["0", "100.00", "22.00", cell(dense), "—", "—", "—"]
  at_1 = [[e["psnr_mean"] for e in records if e["variant"] == v] for v in (IMP,) + CONTROLS]
  assert means[2] == ["1", "80.00", "22.00"] + [cell(v) for v in at_1]

  leads = _table(text, "## IMP's lead")
  assert leads[0] == ["round", "remaining %", "over reinit", "over random", "over oneshot"]
  for control, got in zip(CONTROLS, leads[1][2:]):
    want = study_reports.lead(records, control, 1)
    mark = " (significant)" if want["p"] < 0.05 else ""
    assert got == f"{want['mean']:+.2f} ± {want['std']:.2f}, p = {want['p']:.3f}{mark}"
  assert "(significant)" in leads[1][2]  # reinit

  per_set = _table(text, "## Per test set")
  assert per_set[0] == ["round", "variant", *SETS] and per_set[1] == ["", "input", "24.00", "20.00"]
  oneshot = next(row for row in per_set if row[:2] == ["1", study_reports.LABELS["oneshot"]])
  for s, got in zip(SETS, oneshot[2:]):
    assert got == cell([e["psnr"][s] for e in records if e["variant"] == "oneshot"])


def test_study_md_says_how_flat_each_dense_rounds_loss_ended(tmp_path):
  """Whether the dense network converged is read from its loss over the round's last 20%."""
  changes = {("dense", 0): 0.012, ("dense", 1): -0.031, ("reinit", 0): 0.05, ("imp", 1): 0.004}
  for (variant, seed), change in changes.items():
    summary = dict(_summary(0 if variant == "dense" else 1, {SETS[0]: 26.0, SETS[1]: 21.0}))
    summary["loss_change_over_last_20pct"] = change
    records = study_reports.record(
        str(tmp_path), study_reports.record_of(variant, seed, summary, 1.0)
    )
  config = ml_collections.ConfigDict(
      dict(lottery=dict(rounds=1), study=dict(control_rounds=(1,)), train=dict(epochs=6))
  )
  study_reports.write_markdown(str(tmp_path), records, config)
  text = (tmp_path / "study.md").read_text()
  line = text.split("## Convergence\n\n", 1)[1].split("\n", 1)[0]
  assert "the dense round seed 0 +1.2%, seed 1 -3.1%;" in line
  assert "over all 4 trainings at most 5.0% either way, median 2.1%." in line


def test_study_png_plots_each_variant_with_error_bars(tmp_path):
  records = _records(tmp_path)
  path = study_reports.plot(str(tmp_path), records)
  with Image.open(path) as image:
    assert image.size == (770, 495)  # 7 x 4.5 inches at 110 dpi
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
  assert len(np.unique(pixels, axis=0)) > 50  # drawn on: curves, bars, labels


def test_the_published_study_holds_every_training_and_its_tables_come_from_them(tmp_path):
  """benchmarks/results/ticket_study.*: what the README shows is what the records give."""
  from configs import ticket_study  # pylint: disable=import-outside-toplevel

  results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
  records = json.loads((results / "ticket_study.json").read_text())
  config = ticket_study.get_config()
  seeds, levels = set(config.study.seeds), set(config.study.control_rounds)
  want = {("dense", s, 0) for s in seeds}
  want |= {(IMP, s, r) for s in seeds for r in range(1, config.lottery.rounds + 1)}
  want |= {(c, s, r) for c in CONTROLS for s in seeds for r in levels}
  assert {(e["variant"], e["seed"], e["round"]) for e in records} == want
  assert len(records) == len(want) == 81 and len(seeds) >= 3 and len(levels) >= 5
  for e in records:
    assert set(e["psnr"]) == set(e["input_psnr"]) and e["psnr"]
    assert e["psnr_mean"] == pytest.approx(np.mean(list(e["psnr"].values())))
    assert e["remaining"] == pytest.approx(0.8 ** e["round"], rel=0.01)
  assert min(0.8**r for r in levels) <= 0.11
  study_reports.write_markdown(str(tmp_path), records, config)
  text = (tmp_path / "study.md").read_text()
  assert text == (results / "ticket_study.md").read_text()
  readme = (results.parents[1] / "README.md").read_text()
  shown = text.split("## Convergence")[0].splitlines()  # the means and IMP's leads
  assert [line for line in shown if line.startswith("| ") and line not in readme] == []

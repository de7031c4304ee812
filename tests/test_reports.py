"""summary.json and study.json: one entry per round, replaced when a round is redone, written
so that a killed run never leaves half a file; what the PSNR plot and the sample grid show;
TensorBoard scalars on disk at each log point, and a full disk named."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import eval_result, tensorboard_scalars
from mirl_jax import reports

COUNTS = dict(params=200, prunable=150, alive=120, nonzero=170, remaining=0.8)
RESULTS = [
    eval_result("denoise_15", "BSD68", 68, 33.9, 0.93, 24.6, 0.55),
    eval_result("derain", "Rain100L", 100, 36.4, 0.97, 26.9, 0.84),
]


def _entry(r, psnr=30.0):
  return dict(round=r, remaining=0.8**r, results={"derain/Rain100L": dict(psnr=psnr)})


def test_summary_entry_keys_results_by_degradation_and_set():
  assert reports.summary_entry(1, COUNTS, RESULTS) == dict(
      round=1,
      remaining=0.8,
      nonzero=170,
      params=200,
      results={
          "denoise_15/BSD68": dict(psnr=33.9, ssim=0.93, input_psnr=24.6, input_ssim=0.55),
          "derain/Rain100L": dict(psnr=36.4, ssim=0.97, input_psnr=26.9, input_ssim=0.84),
      },
  )
  assert json.loads(json.dumps(reports.summary_entry(1, COUNTS, RESULTS))) == (
      reports.summary_entry(1, COUNTS, RESULTS)
  )  # survives summary.json as it is


def test_update_summary_adds_replaces_and_sorts_by_round(tmp_path):
  assert reports.read_summary(str(tmp_path)) == []  # a new run has none
  assert reports.update_summary(str(tmp_path), _entry(1)) == [_entry(1)]
  assert reports.update_summary(str(tmp_path), _entry(0)) == [_entry(0), _entry(1)]
  assert reports.update_summary(str(tmp_path), _entry(2)) == [_entry(0), _entry(1), _entry(2)]
  # A resumed run reports round 1 again: its new entry replaces the old one.
  want = [_entry(0), _entry(1, psnr=31.5), _entry(2)]
  assert reports.update_summary(str(tmp_path), _entry(1, psnr=31.5)) == want
  assert reports.read_summary(str(tmp_path)) == want
  assert json.loads((tmp_path / reports.SUMMARY).read_text()) == want
  assert os.listdir(tmp_path) == [reports.SUMMARY]  # no temporary file left behind


def test_update_entries_keys_by_any_field(tmp_path):
  """As study.json: one entry per (variant, round)."""
  path = tmp_path / "study.json"
  key = lambda e: (e["variant"], e["round"])
  assert reports.read_entries(path) == []
  for variant, r, psnr in [
      ("oneshot", 1, 20.0),
      ("imp", 2, 21.0),
      ("imp", 1, 22.0),
      ("oneshot", 1, 23.0),
  ]:
    entries = reports.update_entries(path, dict(variant=variant, round=r, psnr=psnr), key)
  assert entries == [
      dict(variant="imp", round=1, psnr=22.0),
      dict(variant="imp", round=2, psnr=21.0),
      dict(variant="oneshot", round=1, psnr=23.0),
  ]
  assert reports.read_entries(path) == entries


def test_a_failed_write_keeps_the_old_summary(tmp_path, monkeypatch):
  reports.update_summary(str(tmp_path), _entry(0))
  before = (tmp_path / reports.SUMMARY).read_bytes()

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", disk_full)
  with pytest.raises(OSError, match="No space left"):
    reports.update_summary(str(tmp_path), _entry(1))
  assert (tmp_path / reports.SUMMARY).read_bytes() == before
  assert os.listdir(tmp_path) == [reports.SUMMARY]


def test_the_psnr_plot_shows_each_sets_input_dashed_and_plain_percent_ticks():
  entries = [reports.summary_entry(r, dict(COUNTS, remaining=0.8**r), RESULTS) for r in range(3)]
  fig = reports.psnr_figure(entries)
  ax = fig.axes[0]
  curves = {l.get_label(): l for l in ax.get_lines() if l.get_linestyle() == "-"}
  dashed = [l for l in ax.get_lines() if l.get_linestyle() == "--" and len(l.get_ydata()) == 2]
  assert set(curves) == {"denoise_15/BSD68", "derain/Rain100L"}
  levels = {(l.get_color(), l.get_ydata()[0]) for l in dashed}
  assert levels == {
      (curves["denoise_15/BSD68"].get_color(), 24.6),
      (curves["derain/Rain100L"].get_color(), 26.9),
  }
  assert [t.get_text() for t in ax.get_xticklabels()] == ["64%", "80%", "100%"]
  assert ax.get_xlabel() == "remaining prunable weights" and ax.xaxis_inverted()


def test_the_sample_grid_names_its_columns_and_rows_and_gives_each_tiles_psnr():
  rng = np.random.default_rng(0)
  clean = rng.uniform(0.2, 0.8, (2, 16, 24, 3)).astype(np.float32)
  rows = [
      (f"task {i}", c + rng.normal(0, 0.1, c.shape), c + rng.normal(0, 0.02, c.shape), c)
      for i, c in enumerate(clean)
  ]
  fig = reports.sample_figure(rows)
  axes = np.asarray(fig.axes).reshape(2, 3)
  assert [ax.get_title() for ax in axes[0]] == ["degraded", "restored", "clean"]
  assert [ax.get_title() for ax in axes[1]] == ["", "", ""]
  for (label, degraded, restored, c), line in zip(rows, axes):
    assert line[0].get_ylabel() == label
    for image, ax in ((degraded, line[0]), (np.clip(restored, 0, 1), line[1])):
      psnr = 10 * np.log10(1 / np.mean((image.astype(np.float32) - c) ** 2))
      assert ax.get_xlabel() == f"{psnr:.2f} dB"
    assert line[2].get_xlabel() == ""


def test_tensorboard_scalars_are_on_disk_at_each_log_point_and_across_files(tmp_path):
  tb = reports.TensorBoard(str(tmp_path), enabled=True)
  tb.scalars(3, {"train/loss": 0.5, "train/lr": 2e-4})
  assert tensorboard_scalars(tmp_path / "tensorboard") == {
      "train/loss": {3: 0.5},
      "train/lr": {3: pytest.approx(2e-4)},
  }
  tb.flush()
  tb.scalars(6, {"train/loss": 0.25})  # another file, not one that overwrites the first
  tb.flush()
  assert len(os.listdir(tmp_path / "tensorboard")) == 2
  assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == {3: 0.5, 6: 0.25}
  reports.TensorBoard(str(tmp_path / "other"), enabled=False).scalars(1, {"x": 1.0})
  assert not (tmp_path / "other").exists()  # processes other than 0 write nothing


_FULL_DISK_SCRIPT = """
import sys
from tensorboardX import record_writer
from mirl_jax import reports

record_writer.open_file = lambda path: open("/dev/full", "wb")  # every write: ENOSPC
tb = reports.TensorBoard(sys.argv[1], enabled=True)
try:
  tb.scalars(1, {"train/loss": 0.5})
except OSError as e:
  print(e.errno, e.filename)
tb.flush()  # nothing left open to fail again
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_tensorboard_names_its_file_and_leaves_no_traceback(tmp_path):
  """The error names the event file; no thread or exit hook of the writer prints one later."""
  done = subprocess.run(
      [sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path)],
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert done.returncode == 0, done.stderr
  number, filename = done.stdout.split()
  assert int(number) == errno.ENOSPC
  assert filename.startswith(f"{tmp_path}/tensorboard/events.out.tfevents."), filename
  assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr

"""A round's loss curve: its change over the last 20% of the round, kept on disk, plotted."""

import json
import os

import matplotlib.colors
import numpy as np
import pytest

from mirl_jax import loss_curve


def test_the_change_compares_the_last_tenth_with_the_one_before():
  steps = 100
  curve = [(s, 1.0) for s in range(10, 81, 10)] + [(85, 0.50), (90, 0.50), (95, 0.49), (100, 0.47)]
  assert loss_curve.change_over_last_20pct(curve, steps) == pytest.approx(0.48 / 0.50 - 1)
  assert loss_curve.change_over_last_20pct(curve[:-2], steps) is None  # no point after 90%
  assert loss_curve.change_over_last_20pct([], steps) is None


def test_curves_are_written_atomically_and_read_by_round(tmp_path):
  loss_curve.write(str(tmp_path), 1, [(5, 0.2), (10, 0.1)], 10)
  loss_curve.write(str(tmp_path), 0, [(5, 0.4), (9, 0.3), (10, 0.3)], 10)
  records = loss_curve.read(str(tmp_path))
  assert [r["round"] for r in records] == [0, 1]
  assert records[0] == dict(
      round=0, steps=10, curve=[[5, 0.4], [9, 0.3], [10, 0.3]], change_over_last_20pct=0.0
  )
  assert json.loads(loss_curve.path(str(tmp_path), 1).read_text()) == records[1]
  assert sorted(os.listdir(tmp_path / "loss")) == ["round_00.json", "round_01.json"]
  assert loss_curve.read(str(tmp_path / "none")) == []


def test_the_figure_puts_rounds_end_to_end_with_their_change(tmp_path):
  loss_curve.write(str(tmp_path), 0, [(50, 0.4), (85, 0.31), (100, 0.3)], 100)
  loss_curve.write(str(tmp_path), 1, [(50, 0.2), (100, 0.1)], 100)
  ax = loss_curve.figure(loss_curve.read(str(tmp_path))).axes[0]
  lines = ax.get_lines()
  assert [l.get_label() for l in lines] == ["round 0, last 20%: -3.2%", "round 1"]
  np.testing.assert_array_equal(lines[1].get_xdata(), [150, 200])
  assert ax.get_yscale() == "log" and ax.get_ylabel() == "L1 training loss"
  ax.figure.canvas.draw()
  labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
  assert "0.2" in labels and not any("times" in t or "^" in t for t in labels)  # plain numbers


@pytest.mark.parametrize("rounds", [4, 12, 25])
def test_every_round_has_a_colour_of_its_own(tmp_path, rounds):
  for r in range(rounds):  # the study's IMP run has 12 rounds; the default cycle repeats at 10
    loss_curve.write(str(tmp_path), r, [(5, 0.3), (10, 0.2)], 10)
  ax = loss_curve.figure(loss_curve.read(str(tmp_path))).axes[0]
  colors = {matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()}
  assert len(colors) == rounds

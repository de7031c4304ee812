"""sparsity.report, table and summary: the per-layer table written after every round."""

import jax
import numpy as np
import pytest

from conftest import TINY
from mirl_jax import masks as masks_lib
from mirl_jax import models
from mirl_jax import sparsity


def _ticket():
  """Four layers by their PyTorch names: half a conv alive, a norm whole, an attention with
  nothing prunable, an output conv pruned to nothing."""
  params = {
      "patch_embed": {"kernel": np.ones((3, 3, 3, 4), np.float32)},
      "encoder_level1_0": {
          "norm1": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)},
          "attn": {"temperature": np.ones(1, np.float32)},
      },
      "output": {"kernel": np.zeros((3, 3, 4, 3), np.float32)},
  }
  half = np.zeros((3, 3, 3, 4), bool)
  half[..., :2] = True
  masks = {
      "patch_embed": {"kernel": half},
      "encoder_level1_0": {
          "norm1": {"scale": np.ones(4, bool), "bias": None},
          "attn": {"temperature": None},
      },
      "output": {"kernel": np.zeros((3, 3, 4, 3), bool)},
  }
  return params, masks


def _cells(line):
  return line.replace(",", "").split()


def test_report_of_a_hand_made_ticket():
  rows = sparsity.report(*_ticket())
  got = [(r["layer"], r["params"], r["prunable"], r["alive_prunable"], r["alive"]) for r in rows]
  assert got == [
      ("encoder_level1.0.attn", 1, 0, 0, 1),  # parameter (sorted key) order
      ("encoder_level1.0.norm1.body", 8, 4, 4, 8),
      ("output", 108, 108, 0, 0),
      ("patch_embed.proj", 108, 108, 54, 54),
      ("total", 225, 220, 58, 63),
  ]
  by_layer = {r["layer"]: r for r in rows}
  assert by_layer["encoder_level1.0.attn"]["remaining"] == 1.0  # nothing to prune
  assert by_layer["output"]["remaining"] == 0 and by_layer["output"]["compression"] == np.inf
  assert by_layer["patch_embed.proj"]["remaining"] == 0.5
  assert by_layer["total"]["remaining"] == 58 / 220
  assert by_layer["total"]["compression"] == 225 / 63


def test_table_has_a_line_per_layer_and_the_total_last():
  lines = sparsity.table(sparsity.report(*_ticket())).splitlines()
  assert _cells(lines[0]) == ["layer", "params", "prunable", "alive", "remaining", "compress"]
  assert set(lines[1]) == {"-"} and lines[-2] == lines[1]  # a rule above the total
  assert [_cells(line)[0] for line in lines[2:-2]] == [
      "encoder_level1.0.attn",
      "encoder_level1.0.norm1.body",
      "output",
      "patch_embed.proj",
  ]
  assert _cells(lines[4]) == ["output", "108", "108", "0", "0.00%", "infx"]
  assert _cells(lines[-1]) == ["total", "225", "220", "63", "26.36%", "3.57x"]
  assert len({len(line) for line in lines}) == 1  # fixed width


def test_summary_is_the_total_row():
  assert sparsity.summary(sparsity.report(*_ticket())) == (
      "63 / 225 params alive (58 / 220 prunable = 26.36%), compression 3.57x"
  )


def test_the_total_row_of_a_ticket_is_its_count():
  """The table and summary.json (masks.count) must report the same ticket alike."""
  params = models.init_params(TINY, jax.random.key(0))
  rng = np.random.default_rng(0)
  masks = jax.tree.map(
      lambda m: None if m is None else rng.random(m.shape) < 0.3,
      masks_lib.dense_masks(params),
      is_leaf=lambda x: x is None,
  )
  params = jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks))
  rows = sparsity.report(params, masks)
  total, counts = rows[-1], masks_lib.count(params, masks)
  assert (total["params"], total["prunable"], total["alive_prunable"]) == (
      counts["params"],
      counts["prunable"],
      counts["alive"],
  )
  assert total["remaining"] == counts["remaining"]
  assert total["alive"] == counts["params"] - counts["prunable"] + counts["alive"]
  assert sum(r["params"] for r in rows[:-1]) == counts["params"]
  assert _cells(sparsity.table(rows).splitlines()[-1])[:4] == [
      "total",
      str(counts["params"]),
      str(counts["prunable"]),
      str(total["alive"]),
  ]


def test_report_refuses_masks_of_another_tree():
  params, masks = _ticket()
  del masks["output"]
  with pytest.raises(ValueError, match="params have 5 leaves but masks have 4"):
    sparsity.report(params, masks)

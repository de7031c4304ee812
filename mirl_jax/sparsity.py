"""Per-layer and total sparsity of a ticket, as data and as a text table.

Layers are the Flax modules that own parameters, named by their PyTorch
module name (``encoder_level1.0.attn.qkv``) so the table reads like the
reference's. Counts come from the masks (what pruning decided); leaves that
are never pruned (biases, prompts, temperatures) count as alive.
"""

from typing import Any

import jax
import numpy as np

from mirl_jax import convert
from mirl_jax import masks as masks_lib

TOTAL = "total"


def _layer_name(path) -> str:
  parts = tuple(masks_lib.path_name(path).split("/"))
  return convert.torch_name(parts).rsplit(".", 1)[0]


def _row(layer: str, params: int, prunable: int, alive_prunable: int) -> dict:
  alive = params - prunable + alive_prunable
  return {
      "layer": layer,
      "params": params,
      "prunable": prunable,
      "alive_prunable": alive_prunable,
      "alive": alive,
      "remaining": alive_prunable / prunable if prunable else 1.0,
      "compression": params / alive if alive else float("inf"),
  }


def report(params: Any, masks: Any) -> list[dict]:
  """One dict per layer, in parameter order, then a 'total' row.

  remaining = alive prunable / prunable; compression = params / alive params.
  """
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_m = jax.tree_util.tree_flatten(masks, is_leaf=lambda x: x is None)[0]
  if len(flat_p) != len(flat_m):
    raise ValueError(f"params have {len(flat_p)} leaves but masks have {len(flat_m)}")
  counts: dict[str, list[int]] = {}
  for (path, p), m in zip(flat_p, flat_m):
    c = counts.setdefault(_layer_name(path), [0, 0, 0])
    size = int(np.prod(np.shape(p)))
    c[0] += size
    if m is not None:
      c[1] += size
      c[2] += int(np.count_nonzero(np.asarray(m)))
  rows = [_row(name, *c) for name, c in counts.items()]
  rows.append(
      _row(TOTAL, *(sum(r[k] for r in rows) for k in ("params", "prunable", "alive_prunable")))
  )
  return rows


def table(rows: list[dict]) -> str:
  """The report as a fixed-width text table (remaining in %, compression as Nx)."""
  width = max(len(r["layer"]) for r in rows)
  head = (
      f"{'layer':<{width}} {'params':>11} {'prunable':>11} {'alive':>11} "
      f"{'remaining':>9} {'compress':>9}"
  )
  lines = [head, "-" * len(head)]
  for r in rows:
    if r["layer"] == TOTAL:
      lines.append("-" * len(head))
    lines.append(
        f"{r['layer']:<{width}} {r['params']:>11,} {r['prunable']:>11,} "
        f"{r['alive']:>11,} {100 * r['remaining']:>8.2f}% "
        f"{r['compression']:>8.2f}x"
    )
  return "\n".join(lines)


def summary(rows: list[dict]) -> str:
  """One line: the total row, e.g. for a log after each round."""
  t = rows[-1]
  return (
      f"{t['alive']:,} / {t['params']:,} params alive "
      f"({t['alive_prunable']:,} / {t['prunable']:,} prunable = "
      f"{100 * t['remaining']:.2f}%), compression {t['compression']:.2f}x"
  )

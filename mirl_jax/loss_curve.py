"""Each round's training loss: kept beside its ticket, read for convergence, plotted.

A round's curve is the mean training loss between log points (train.log_every_steps),
so that it is smooth enough to read; whether a round has converged is read from its
last 20%: the mean of the last tenth of the round against the tenth before it.
"""

import json
from pathlib import Path

import numpy as np

from mirl_jax import images

FOLDER = "loss"


def path(workdir: str, r: int) -> Path:
  return Path(workdir) / FOLDER / f"round_{r:02d}.json"


def change_over_last_20pct(curve, steps: int) -> float | None:
  """(mean loss over the last 10% of the steps) / (over the 10% before) - 1; None if either
  tenth has no point."""
  points = np.asarray(curve, float).reshape(-1, 2)
  before = points[(points[:, 0] > 0.8 * steps) & (points[:, 0] <= 0.9 * steps), 1]
  last = points[points[:, 0] > 0.9 * steps, 1]
  if not before.size or not last.size:
    return None
  return float(last.mean() / before.mean() - 1.0)


def write(workdir: str, r: int, curve, steps: int) -> None:
  """Round r's curve of (step in round, mean loss), written before its ticket."""
  record = dict(
      round=r,
      steps=steps,
      curve=[[int(s), float(v)] for s, v in curve],
      change_over_last_20pct=change_over_last_20pct(curve, steps),
  )
  images.write_atomic(path(workdir, r), json.dumps(record, indent=1).encode())


def read(workdir: str) -> list[dict]:
  """Every round's record, by round; rounds imported or trained before curves were kept
  have none."""
  found = sorted(Path(workdir, FOLDER).glob("round_*.json"))
  return [json.loads(p.read_text()) for p in found]


def figure(records: list[dict]):
  """Training loss against the steps of the whole run, a colour per round, with each round's
  change over its last 20% in the legend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = _distinct_colors(plt, len(records))
  for record, color in zip(records, colors):
    steps, losses = np.asarray(record["curve"], float).reshape(-1, 2).T
    change = record["change_over_last_20pct"]
    last = "" if change is None else f", last 20%: {100 * change:+.1f}%"
    ax.plot(
        record["round"] * record["steps"] + steps,
        losses,
        color=color,
        label=f"round {record['round']}{last}",
    )
  ax.set(xlabel="training step (all rounds)", ylabel="L1 training loss", yscale="log")
  ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))  # 0.06, not 6x10^-2
  ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def _distinct_colors(plt, n: int) -> list:
  """A colour per round that no other round shares: matplotlib's default cycle repeats after
  10, so a study's 12 rounds take tab20, and longer runs a sequential map."""
  if n <= 10:
    return [f"C{i}" for i in range(n)]
  if n <= 20:
    return [plt.get_cmap("tab20")(i) for i in range(n)]
  return [plt.get_cmap("viridis")(i / (n - 1)) for i in range(n)]

"""What a run shows: TensorBoard scalars, summary.json, PSNR plot, sample grids.

`report_round` writes all of a ticket's reports; training, the ticket study's
controls and `--mode evaluate` share it. Only process 0 writes; every writer
here replaces its file atomically, so a run killed mid-write never leaves a
truncated summary or image behind.
"""

import io
import json
import os
from pathlib import Path

import numpy as np

from mirl_jax import images

SUMMARY = "summary.json"


class TensorBoard:
  """Scalars under WORKDIR/tensorboard; a no-op on processes other than 0.

  tensorboardX writes from a thread and its own flush() leaves that thread's
  queue unwritten, so `flush` closes the event file (which drains it) and the
  next scalars open another one: after a flush, everything is on disk.
  """

  def __init__(self, workdir: str, enabled: bool):
    self._directory = os.path.join(workdir, "tensorboard") if enabled else None
    self._writer, self._files = None, 0

  def scalars(self, step: int, values: dict) -> None:
    if self._directory is None:
      return
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      self._files += 1  # files opened within one second must not share a name
      self._writer = SummaryWriter(self._directory, filename_suffix=f".{os.getpid()}.{self._files}")
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_entries(path) -> list[dict]:
  """The entries of a JSON list file (summary.json, study.json); [] if there is none."""
  path = Path(path)
  return json.loads(path.read_text()) if path.exists() else []


def update_entries(path, entry: dict, key) -> list[dict]:
  """Adds `entry` or replaces the one with the same key(entry), atomically; returns all
  entries sorted by key."""
  entries = [e for e in read_entries(path) if key(e) != key(entry)]
  entries = sorted(entries + [entry], key=key)
  images.write_atomic(path, json.dumps(entries, indent=2).encode())
  return entries


def read_summary(workdir: str) -> list[dict]:
  return read_entries(Path(workdir) / SUMMARY)


def update_summary(workdir: str, entry: dict) -> list[dict]:
  """Adds or replaces the entry of entry['round']; returns all entries by round."""
  return update_entries(Path(workdir) / SUMMARY, entry, key=lambda e: e["round"])


def summary_entry(round_index: int, counts: dict, results: list[dict]) -> dict:
  """One round: sparsity and, per task and test set, restored and input metrics."""
  return dict(
      round=round_index,
      remaining=counts["remaining"],
      nonzero=counts["nonzero"],
      params=counts["params"],
      results={
          f"{r['degradation']}/{r['dataset']}": {
              k: r[k] for k in ("psnr", "ssim", "input_psnr", "input_ssim")
          }
          for r in results
      },
  )


def plot_psnr(workdir: str, entries: list[dict]) -> Path:
  """PSNR per task and test set against the remaining fraction of prunable weights."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5))
  names = sorted({name for e in entries for name in e["results"]})
  for name in names:
    points = [
        (100 * e["remaining"], e["results"][name]["psnr"]) for e in entries if name in e["results"]
    ]
    ax.plot(*zip(*points), marker="o", label=name)
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("remaining prunable weights (%)")
  ax.set_ylabel("PSNR (dB)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  path = Path(workdir) / "psnr_vs_remaining.png"
  save_figure(fig, path)
  return path


def save_figure(fig, path) -> None:
  """A matplotlib figure as a PNG, written atomically (images.write_atomic); closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  images.write_atomic(path, buffer.getvalue())


def sample_grid(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], height: int = 128
) -> np.ndarray:
  """degraded | restored | clean, one row per sample, resized to a common height."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  def fit(image):
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

  lines = [np.concatenate([fit(a), fit(b), fit(c)], axis=1) for a, b, c in rows]
  width = max(line.shape[1] for line in lines)
  lines = [np.pad(line, ((0, 4), (0, width - line.shape[1]), (0, 0))) for line in lines]
  return np.concatenate(lines, axis=0)


def write_samples(forward, data_config, seed: int, path: str) -> None:
  """The first test image of every evaluation, as a degraded/restored/clean grid."""
  from mirl_jax import images, pipeline  # pylint: disable=import-outside-toplevel

  rows = []
  for eval_set in pipeline.eval_sets(data_config):
    example = next(iter(pipeline.eval_dataset(data_config, eval_set, seed=seed)))
    restored = np.asarray(forward(example["degraded"]))[0]
    rows.append((example["degraded"][0], restored, example["clean"][0]))
  images.write_png(path, sample_grid(rows))


def report_round(
    workdir: str,
    r: int,
    model,
    params,
    masks,
    data_config,
    seed: int,
    tb: "TensorBoard | None" = None,
    progress: bool = True,
    images_dir: str | None = None,
) -> dict:
  """Evaluates ticket r and writes its reports; returns its summary.json entry.

  WORKDIR/sparsity/round_RR.txt (per layer), eval/round_RR.md and .json (the
  test sets), summary.json (one entry per round) with psnr_vs_remaining.png,
  samples_round_RR.png; TensorBoard scalars at step r if `tb` is given; every
  restored test image under `images_dir` if given.
  """
  # pylint: disable-next=import-outside-toplevel
  from mirl_jax import evaluate, masks as masks_lib, restore, sparsity

  counts = masks_lib.count(params, masks)
  forward = restore.make_forward(model, params)
  results = evaluate.evaluate(
      forward, data_config, seed=seed, output_dir=images_dir, progress=progress
  )
  rows = sparsity.report(params, masks)
  table = Path(workdir) / "sparsity" / f"round_{r:02d}.txt"
  images.write_atomic(table, (sparsity.table(rows) + "\n").encode())
  print(f"\nRound {r}: {sparsity.summary(rows)} (per layer: {table})")
  print(evaluate.format_table(results))
  evaluate.write_reports(results, os.path.join(workdir, "eval"), stem=f"round_{r:02d}")
  entry = summary_entry(r, counts, results)
  plot_psnr(workdir, update_summary(workdir, entry))
  write_samples(forward, data_config, seed, os.path.join(workdir, f"samples_round_{r:02d}.png"))
  if tb is not None:
    tb.scalars(
        r,
        {
            "sparsity/remaining": counts["remaining"],
            **{
                f"eval/{e['degradation']}/{e['dataset']}/{k}": e[k]
                for e in results
                for k in ("psnr", "ssim")
            },
        },
    )
    tb.flush()
  return entry

"""Evaluation as the reference: whole test images through the network, PSNR/SSIM per set.

Every (test set, sigma) of `pipeline.eval_sets` gives one result. Each image goes through
`forward` whole (centre-cropped to multiples of 16 by the pipeline); the output is clipped to
[0, 1] and compared with the clean image by `metrics.psnr_ssim` (skimage's PSNR and SSIM with
data_range 1, no uint8 quantisation, as MIR-L's utils/val_utils.py). The degraded input is
scored the same way, as the baseline that restoration must beat. Per-image values are averaged
in float64 on the host.

Reports: `format_table` prints PSNR with 2 and SSIM with 4 decimals, as the paper reports;
`write_reports` writes `<stem>.md` and `<stem>.json` atomically. A PSNR of +inf (restored equal
to clean) propagates into the average and is written as `Infinity` in the JSON, which Python's
json module reads back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mirl_jax import images, metrics, pipeline

RESULT_KEYS = (
    "task",
    "degradation",
    "dataset",
    "images",
    "psnr",
    "ssim",
    "input_psnr",
    "input_ssim",
)
_COLUMNS = (
    ("Degradation", "degradation"),
    ("Dataset", "dataset"),
    ("Images", "images"),
    ("PSNR", "psnr"),
    ("SSIM", "ssim"),
    ("Input PSNR", "input_psnr"),
    ("Input SSIM", "input_ssim"),
)


@jax.jit
def _score(restored, degraded, clean):
  """Clip, then (psnr, ssim, input_psnr, input_ssim); compiled once per image shape."""
  restored = jnp.clip(restored, 0.0, 1.0)
  psnr, ssim = metrics.psnr_ssim(restored, clean)
  input_psnr, input_ssim = metrics.psnr_ssim(degraded, clean)
  return restored, jnp.stack([psnr[0], ssim[0], input_psnr[0], input_ssim[0]])


def evaluate(
    forward: Callable[[jax.Array], jax.Array],
    data_config,
    *,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict]:
  """One result dict (RESULT_KEYS) per eval set, in config order.

  `forward` maps a (1, H, W, 3) float32 image in [0, 1] to its restoration of the same shape.
  With `output_dir`, restorations are saved as output_dir/<degradation>/<dataset>/<name>.png.
  """
  eval_sets = pipeline.eval_sets(data_config)
  total = sum(pipeline.eval_size(data_config, eval_set) for eval_set in eval_sets)
  results = []
  with tqdm(total=total, desc="evaluate", unit="image", disable=not progress) as bar:
    for eval_set in eval_sets:
      bar.set_description(f"evaluate {eval_set.degradation}/{eval_set.dataset}")
      sums, count = np.zeros(4, np.float64), 0
      for example in pipeline.eval_dataset(data_config, eval_set, seed=seed):
        degraded = jnp.asarray(example["degraded"])
        restored = forward(degraded)
        if tuple(restored.shape) != tuple(degraded.shape):
          raise ValueError(
              f"forward returned shape {tuple(restored.shape)} for input "
              f'{tuple(degraded.shape)} ({eval_set.spec}, {example["name"]}): '
              "expected the same shape."
          )
        restored, scores = _score(
            jnp.asarray(restored, jnp.float32), degraded, jnp.asarray(example["clean"])
        )
        scores = np.asarray(scores, np.float64)
        sums += scores
        count += 1
        if output_dir is not None:
          images.write_png(
              Path(output_dir) / eval_set.degradation / eval_set.dataset / f'{example["name"]}.png',
              np.asarray(restored[0]),
          )
        bar.update(1)
        bar.set_postfix(psnr=f"{sums[0] / count:.2f}", ssim=f"{sums[1] / count:.4f}")
      if not count:
        raise ValueError(f"test set {eval_set.spec!r} has no images: expected at least one.")
      psnr, ssim, input_psnr, input_ssim = (float(v) for v in sums / count)
      results.append(
          dict(
              task=eval_set.task,
              degradation=eval_set.degradation,
              dataset=eval_set.dataset,
              images=count,
              psnr=psnr,
              ssim=ssim,
              input_psnr=input_psnr,
              input_ssim=input_ssim,
          )
      )
  return results


def average(results: list[dict]) -> dict:
  """Unweighted mean over results (each set/sigma counts once), as the paper's Average column."""
  if not results:
    raise ValueError("results is empty: expected at least one result to average.")
  out = {"degradation": "average", "dataset": "", "images": sum(r["images"] for r in results)}
  for key in ("psnr", "ssim", "input_psnr", "input_ssim"):
    out[key] = float(np.mean([r[key] for r in results]))
  return out


def _cells(result: dict) -> list[str]:
  cells = []
  for _, key in _COLUMNS:
    value = result[key]
    if key.endswith("psnr"):
      cells.append(f"{value:.2f}")
    elif key.endswith("ssim"):
      cells.append(f"{value:.4f}")
    else:
      cells.append(str(value))
  return cells


def format_table(results: list[dict]) -> str:
  """An aligned markdown table, one row per result plus an average row when there are several."""
  rows = [_cells(r) for r in results]
  if len(results) > 1:
    rows.append(_cells(average(results)))
  header = [title for title, _ in _COLUMNS]
  widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
  numeric = [key not in ("degradation", "dataset") for _, key in _COLUMNS]

  def line(cells):
    padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
    return "| " + " | ".join(padded) + " |"

  rule = (
      "|"
      + "|".join(
          ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)
      )
      + "|"
  )
  return "\n".join([line(header), rule] + [line(row) for row in rows])


def write_reports(
    results: list[dict], directory: str | os.PathLike, stem: str = "eval"
) -> tuple[Path, Path]:
  """Writes <stem>.md (the table) and <stem>.json ({'results': [...], 'average': {...}})."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  md_path, json_path = directory / f"{stem}.md", directory / f"{stem}.json"
  images.write_atomic(md_path, f"# Evaluation: {stem}\n\n{format_table(results)}\n".encode())
  report = {"results": list(results), "average": average(results) if results else None}
  images.write_atomic(json_path, (json.dumps(report, indent=2) + "\n").encode())
  return md_path, json_path

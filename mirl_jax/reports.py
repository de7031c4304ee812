"""What a run shows: TensorBoard scalars, summary.json, PSNR plot, sample grids.

`report_round` writes all of a ticket's reports; training, the ticket study's
controls and `--mode evaluate` share it. Only process 0 writes; every writer
here but TensorBoard's (append-only event files) replaces its file atomically,
so a run killed mid-write never leaves a truncated summary or image behind.
"""

import contextlib
import io
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from mirl_jax import images
from mirl_jax import loss_curve

SUMMARY = "summary.json"


class TensorBoard:
  """Scalars under WORKDIR/tensorboard; a no-op on processes other than 0.

  tensorboardX's SummaryWriter writes from a thread and closes its file again at
  exit: on a full disk the error comes from that thread or from its atexit hook,
  as a traceback naming no file. Its RecordWriter writes here instead, in this
  thread, flushed at each log point (a reader sees it at once); a failed write
  closes the file and raises an OSError that names it (`images.raise_naming`).
  """

  def __init__(self, workdir: str, enabled: bool):
    self._directory = os.path.join(workdir, "tensorboard") if enabled else None
    self._file, self._path, self._files = None, None, 0

  def scalars(self, step: int, values: dict) -> None:
    if self._directory is None:
      return
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    with self._naming_failures():
      if self._file is None:
        self._open()
      wall_time = time.time()
      for name, value in values.items():
        event = event_pb2.Event(
            wall_time=wall_time, step=int(step), summary=summary.scalar(name, float(value))
        )
        self._file.write(event.SerializeToString())
      self._file.flush()

  def flush(self) -> None:
    """Closes the event file; the next scalars open another one."""
    if self._file is not None:
      with self._naming_failures():
        self._file.close()
      self._file = None

  def _open(self) -> None:
    # pylint: disable-next=import-outside-toplevel
    from tensorboardX import record_writer
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    os.makedirs(self._directory, exist_ok=True)
    self._files += 1  # files opened within one second must not share a name
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{self._files}"
    self._path = os.path.join(self._directory, name)
    self._file = record_writer.RecordWriter(self._path)
    self._file.write(
        event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString()
    )

  @contextlib.contextmanager
  def _naming_failures(self):
    try:
      yield
    except OSError as e:
      file, self._file = self._file, None
      if file is not None:
        try:
          file.close()  # closes the descriptor even when its last flush fails
        except OSError:
          pass
      images.raise_naming(e, self._path or self._directory)
      raise


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


def psnr_figure(entries: list[dict]):
  """PSNR per task and test set against the remaining prunable weights; each one's degraded
  input as a dashed line of its colour."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in sorted({name for e in entries for name in e["results"]}):
    found = [e for e in entries if name in e["results"]]
    points = [(100 * e["remaining"], e["results"][name]["psnr"]) for e in found]
    (line,) = ax.plot(*zip(*points), marker="o", label=name)
    ax.axhline(found[0]["results"][name]["input_psnr"], color=line.get_color(), linestyle="--")
  ax.plot([], [], color="gray", linestyle="--", label="its degraded input")
  percent_axis(ax, sorted({100 * e["remaining"] for e in entries}))
  ax.set_ylabel("PSNR (dB)")
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  return fig


def plot_psnr(workdir: str, entries: list[dict]) -> Path:
  path = Path(workdir) / "psnr_vs_remaining.png"
  save_figure(psnr_figure(entries), path)
  return path


def percent_axis(ax, percents: list[float]) -> None:
  """A log x axis of remaining weights, densest left, ticked at `percents` in plain percent."""
  ax.set_xscale("log")
  ax.set_xticks(percents, [f"{p:.3g}%" for p in percents], fontsize=8)
  ax.minorticks_off()
  ax.invert_xaxis()
  ax.set_xlabel("remaining prunable weights")
  ax.grid(True, alpha=0.3)


def save_figure(fig, path) -> None:
  """A matplotlib figure as a PNG, written atomically (images.write_atomic); closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  images.write_atomic(path, buffer.getvalue())


def sample_figure(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], tile: float = 2.2):
  """A grid with a row per (label, degraded, restored, clean), titled columns, each tile's
  PSNR against the clean image under it."""
  from mirl_jax import metrics  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  aspect = max(row[1].shape[0] / row[1].shape[1] for row in rows)  # height / width of a tile
  size = (3 * tile, len(rows) * (tile * aspect + 0.4))  # 0.4 inch a row for its PSNR line
  fig, axes = plt.subplots(len(rows), 3, figsize=size, squeeze=False)
  for i, (label, degraded, restored, clean) in enumerate(rows):
    tiles = {"degraded": degraded, "restored": np.clip(restored, 0.0, 1.0), "clean": clean}
    for ax, (title, image) in zip(axes[i], tiles.items()):
      ax.imshow(np.clip(image, 0.0, 1.0))
      ax.set(xticks=[], yticks=[], title=title if i == 0 else "")
      if title != "clean":
        ax.set_xlabel(f"{float(metrics.psnr(image[None], clean[None])[0]):.2f} dB", fontsize=9)
    axes[i][0].set_ylabel(label, fontsize=9)
  return fig


def write_samples(forward, data_config, seed: int, path: str) -> None:
  """The first test image of every evaluation: degraded, restored and clean, with PSNRs."""
  from mirl_jax import pipeline  # pylint: disable=import-outside-toplevel

  rows = []
  for eval_set in pipeline.eval_sets(data_config):
    example = next(iter(pipeline.eval_dataset(data_config, eval_set, seed=seed)))
    restored = np.asarray(forward(example["degraded"]))[0]
    label = f"{eval_set.degradation}\n{eval_set.dataset}"
    rows.append((label, example["degraded"][0], restored, example["clean"][0]))
  save_figure(sample_figure(rows), path)


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
  samples_round_RR.png, learning_curve.png (the rounds' loss/, if trained here); TensorBoard scalars at step r if `tb` is given; every
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
  curves = loss_curve.read(workdir)
  for record in curves:  # trained here: its convergence beside its scores
    if record["round"] == r:
      entry["loss_change_over_last_20pct"] = record["change_over_last_20pct"]
  plot_psnr(workdir, update_summary(workdir, entry))
  if curves:
    save_figure(loss_curve.figure(curves), Path(workdir) / "learning_curve.png")
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

"""Training-pipeline throughput in 64x64 patches per second, with 0, 1 and 2 Grain workers.

Two data sets: the demo data (~256 px images) and 20 synthetic full-size (1500x1000) PNG and
JPEG files built with the same TFDS builder. Each figure is the median of several timed windows
taken after a warm-up (which absorbs worker start-up).

    python benchmarks/bench_pipeline.py [--windows 3] [--batch_size 8]
"""

import os
import statistics
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags
from PIL import Image

from mirl_jax import datasets, demo_data, pipeline

_WINDOWS = flags.DEFINE_integer("windows", 3, "Timed windows per setting (median reported).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Patches per batch.")


def _synthetic(h: int, w: int, seed: int) -> np.ndarray:
  """A photo-like image: smooth colour fields plus fine texture (so codecs do real work)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (h // 100 + 2, w // 100 + 2, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
  texture = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
  return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def write_full_size_tree(root: Path, count: int = 20) -> None:
  """20 clean images (half PNG, half JPEG) and 10 rain pairs, all 1500x1000."""
  clean = root / "train" / "denoise" / "BigClean"
  rain = root / "train" / "derain" / "BigRain"
  for sub in (clean, rain / "input", rain / "target"):
    sub.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    image = Image.fromarray(_synthetic(1000, 1500, i))
    if i % 2:
      image.save(clean / f"img{i:02d}.jpg", quality=92)
    else:
      image.save(clean / f"img{i:02d}.png")
  for i in range(count // 2):
    target = _synthetic(1000, 1500, 100 + i)
    streaks = 40 * (np.arange(1500) % 37 == 0)[None, :, None]
    rainy = np.clip(target.astype(int) + streaks, 0, 255)
    Image.fromarray(target).save(rain / "target" / f"r{i:02d}_gt.png")
    Image.fromarray(rainy.astype(np.uint8)).save(rain / "input" / f"r{i:02d}_rainy.jpg", quality=92)


def data_config(data_dir, train_sets, workers, batch_size=None):
  """The data config of one case; `batch_size` defaults to --batch_size."""
  return ml_collections.ConfigDict(
      dict(
          data_dir=str(data_dir),
          train_sets=list(train_sets),
          test_sets=[],
          batch_size=batch_size or _BATCH.value,
          patch_size=64,
          sigmas=[15, 25, 50],
          repeats={"denoise": 3, "derain": 120, "dehaze": 1},
          worker_count=workers,
          read_threads=2,
      )
  )


def measure(config, window_batches: int, windows: int | None = None) -> float:
  """Median patches/s over `windows` (default --windows) timed windows of one iterator."""
  iterator = pipeline.train_data(config, seed=0, shard_index=0, shard_count=1).iterator()
  try:
    for _ in range(max(4, window_batches // 2)):  # Warm-up: worker start, first reads.
      next(iterator)
    rates = []
    for _ in range(windows or _WINDOWS.value):
      start = time.perf_counter()
      for _ in range(window_batches):
        next(iterator)
      rates.append(window_batches * config.batch_size / (time.perf_counter() - start))
    return statistics.median(rates)
  finally:
    iterator.close()


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    start = time.perf_counter()
    demo_data.build_demo(tmp / "demo_manual", tmp / "demo_data")
    print(f"demo data built in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    write_full_size_tree(tmp / "big_manual")
    for spec in ("denoise/BigClean", "derain/BigRain"):
      datasets.build_set("train", spec, tmp / "big_manual", tmp / "big_data")
    print(f"full-size data written and built in {time.perf_counter() - start:.1f} s")
    cases = [
        ("demo (~256 px)", tmp / "demo_data", demo_data.DEMO_TRAIN_SETS, 100),
        ("full-size 1500x1000", tmp / "big_data", ("denoise/BigClean", "derain/BigRain"), 15),
    ]
    print(f"\nload average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f'{"data":<22}{"workers":>8}{"patches/s":>12}')
    for name, data_dir, sets, window in cases:
      for workers in (0, 1, 2):
        rate = measure(data_config(data_dir, sets, workers), window)
        print(f"{name:<22}{workers:>8}{rate:>12.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)

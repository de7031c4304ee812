"""Grain pipelines over the built sets: the training mixture of random patches, and evaluation.

Training follows MIR-L: one epoch is one pass over a list holding each clean denoise image
`repeats.denoise` times per sigma, each derain pair `repeats.derain` times and each dehaze pair
`repeats.dehaze` times, freshly shuffled every epoch (its tail is dropped so that an epoch is a
whole number of global batches). Each sample is a random patch (same place in both images;
images smaller than the patch are reflect-padded), one of the 7 non-identity dihedral transforms,
and for denoising the noise clip(clean + N(0, 1) * sigma, 0, 255) truncated to uint8, as the
reference's astype does. All randomness derives from (seed, position in the stream), so output
does not depend on worker_count and a restored iterator continues exactly.

Config keys read (besides data.data_dir, data.train_sets, data.test_sets of datasets.py):

    data.batch_size     patches per batch and per process (run_data_config: the
                        config's global batch divided over the processes)
    data.patch_size     64
    data.sigmas         (15, 25, 50)
    data.repeats        {'denoise': 3, 'derain': 120, 'dehaze': 1}
    data.worker_count   Grain worker processes (0: in the main process)
    data.read_threads   threads per process reading records (e.g. 2)

Evaluation gives whole test images centre-cropped to multiples of 16, batch size 1; denoise
inputs get noise from np.random.default_rng([seed, sigma, index in sorted file order]).

Iterator state: `iterator.get_state()` / `set_state()`, or with Orbax
`grain.checkpoint.CheckpointSave(iterator)` / `grain.checkpoint.CheckpointRestore(iterator)`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import grain
import numpy as np

from mirl_jax import datasets, demo_data, images

TASK_IDS = {task: index for index, task in enumerate(datasets.TASKS)}
EVAL_MULTIPLE = 16


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """uint8 clean -> uint8 noisy: clip(clean + N(0, 1) * sigma, 0, 255), truncated like astype."""
  noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma)
  return np.clip(clean.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def dihedral(image: np.ndarray, code: int) -> np.ndarray:
  """Code 0..7: rotate by 90 * (code // 2) degrees, then flip up-down if code is odd."""
  out = np.rot90(image, k=code // 2)
  return np.flipud(out) if code % 2 else out


def crop_to_multiple(image: np.ndarray, multiple: int = EVAL_MULTIPLE) -> np.ndarray:
  """Centre crop to multiples of `multiple`: floor half of the excess off the top/left."""
  h, w = image.shape[:2]
  top, left = (h % multiple) // 2, (w % multiple) // 2
  return image[top : top + h - h % multiple, left : left + w - w % multiple]


# ----------------------------------------------------------------------------
# Training.


def _train_sources(data_config) -> list[tuple[str, object]]:
  return [
      (datasets.parse_set(spec)[0], datasets.data_source("train", spec, data_config.data_dir))
      for spec in data_config.train_sets
  ]


def mixture(data_config, sizes: list[int] | None = None) -> np.ndarray:
  """The epoch list: rows (source index, record index, sigma), before shuffling."""
  tasks = [datasets.parse_set(spec)[0] for spec in data_config.train_sets]
  if sizes is None:
    sizes = [len(source) for _, source in _train_sources(data_config)]
  rows = []
  for source_index, (task, size) in enumerate(zip(tasks, sizes)):
    repeats = int(data_config.repeats[task])
    sigmas = [int(s) for s in data_config.sigmas] if task == "denoise" else [0]
    for sigma in sigmas:
      block = np.stack([np.full(size, source_index), np.arange(size), np.full(size, sigma)], 1)
      rows.append(np.tile(block, (repeats, 1)))
  if not rows:
    raise ValueError('data.train_sets is empty: expected at least one "task/Set".')
  return np.concatenate(rows).astype(np.int64)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    return jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index}: expected 0 <= shard_index < {shard_count}.")
  return shard_index, shard_count


@dataclasses.dataclass(frozen=True)
class _EpochLookup:
  """Stream position -> mixture row: epoch e uses the e-th permutation, truncated."""

  shuffled: grain.MapDataset
  epoch_items: int

  def __call__(self, position: int) -> np.ndarray:
    epoch, offset = divmod(int(position), self.epoch_items)
    return self.shuffled[epoch * len(self.shuffled) + offset]


@dataclasses.dataclass(frozen=True)
class _MakePatch:
  """Mixture row -> training example; the rng comes from Grain's random_map."""

  sources: tuple
  tasks: tuple
  patch_size: int

  def __call__(self, row: np.ndarray, rng: np.random.Generator) -> dict:
    source_index, record_index, sigma = (int(v) for v in row)
    record = self.sources[source_index][record_index]
    clean = images.decode_rgb(record["clean"])
    degraded = images.decode_rgb(record["degraded"]) if "degraded" in record else clean
    h, w = clean.shape[:2]
    p = self.patch_size
    if h < p or w < p:
      pad = ((0, max(0, p - h)), (0, max(0, p - w)), (0, 0))
      clean, degraded = np.pad(clean, pad, mode="reflect"), np.pad(degraded, pad, mode="reflect")
      h, w = clean.shape[:2]
    top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
    code = int(rng.integers(1, 8))  # One of the 7 non-identity transforms, as the reference.
    clean = dihedral(clean[top : top + p, left : left + p], code)
    degraded = dihedral(degraded[top : top + p, left : left + p], code)
    if sigma:
      degraded = add_noise(clean, sigma, rng)
    task = self.tasks[source_index]
    return {
        "degraded": degraded.astype(np.float32) / 255.0,
        "clean": clean.astype(np.float32) / 255.0,
        "task_id": np.int32(TASK_IDS[task]),
        "sigma": np.int32(sigma),
    }


def steps_per_epoch(data_config, shard_count: int | None = None) -> int:
  """Batches per epoch and per process: len(mixture) // (batch_size x processes)."""
  shard_count = shard_count or _shard(None, None)[1]
  return len(mixture(data_config)) // (int(data_config.batch_size) * shard_count)


@dataclasses.dataclass
class TrainData:
  """The per-process training stream and its epoch arithmetic."""

  dataset: grain.IterDataset
  steps_per_epoch: int
  mixture_size: int

  def iterator(self) -> grain.DatasetIterator:
    return iter(self.dataset)


def train_data(
    data_config,
    seed: int,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
) -> TrainData:
  """Batches of {'degraded', 'clean': float32 (B, P, P, 3), 'task_id', 'sigma': int32 (B,)}.

  Sharded by JAX process unless shard_index/shard_count are given; endless unless num_epochs.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  batch_size = int(data_config.batch_size)
  sources = _train_sources(data_config)
  rows = mixture(data_config, [len(source) for _, source in sources])
  global_batch = batch_size * shard_count
  steps = len(rows) // global_batch
  if steps == 0:
    raise ValueError(
        f"the training mixture has {len(rows)} samples, fewer than one global "
        f"batch of {global_batch} (config.data.batch_size)."
    )
  epoch_items = steps * global_batch
  total = sys.maxsize if num_epochs is None else epoch_items * int(num_epochs)
  shuffled = grain.MapDataset.source(rows).shuffle(seed=seed % 2**32)
  patches = _MakePatch(
      tuple(s for _, s in sources), tuple(t for t, _ in sources), int(data_config.patch_size)
  )
  dataset = (
      grain.MapDataset.range(total)
      .map(_EpochLookup(shuffled, epoch_items))
      .random_map(patches, seed=(seed + 1) % 2**32)[  # rng from (seed, global position)
          shard_index::shard_count
      ]
      .batch(batch_size, drop_remainder=True)
  )
  read = grain.ReadOptions(num_threads=int(data_config.read_threads), prefetch_buffer_size=4)
  dataset = dataset.to_iter_dataset(read)
  if int(data_config.worker_count) > 0:
    dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=int(data_config.worker_count))
    )
  return TrainData(dataset=dataset, steps_per_epoch=steps, mixture_size=len(rows))


# ----------------------------------------------------------------------------
# Evaluation.


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation: a test set, with a sigma for denoising."""

  spec: str  # 'denoise/BSD68'
  task: str  # 'denoise'
  dataset: str  # 'BSD68'
  sigma: int  # 0 unless denoising
  degradation: str  # 'denoise_25', 'derain', 'dehaze'


def eval_sets(data_config) -> list[EvalSet]:
  """Every (test set, sigma) evaluation the config names, in config order."""
  out = []
  for spec in data_config.test_sets:
    task, name = datasets.parse_set(spec)
    sigmas = [int(s) for s in data_config.sigmas] if task == "denoise" else [0]
    for sigma in sigmas:
      out.append(EvalSet(spec, task, name, sigma, f"denoise_{sigma}" if sigma else task))
  return out


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  eval_set: EvalSet
  seed: int

  def __call__(self, index: int, record: dict) -> dict:
    clean = crop_to_multiple(images.decode_rgb(record["clean"]))
    if self.eval_set.sigma:
      # Fixed noise per image: rng seeded by (seed, sigma, index in sorted file order).
      rng = np.random.default_rng([self.seed, self.eval_set.sigma, index])
      degraded = add_noise(clean, self.eval_set.sigma, rng)
    else:
      degraded = crop_to_multiple(images.decode_rgb(record["degraded"]))
    return {
        "degraded": degraded[None].astype(np.float32) / 255.0,
        "clean": clean[None].astype(np.float32) / 255.0,
        "name": record["name"].decode(),
        "dataset": self.eval_set.dataset,
        "task": self.eval_set.task,
        "degradation": self.eval_set.degradation,
        "sigma": self.eval_set.sigma,
    }


def eval_size(data_config, eval_set: EvalSet) -> int:
  return len(datasets.data_source("test", eval_set.spec, data_config.data_dir))


def eval_dataset(data_config, eval_set: EvalSet, seed: int = 0) -> grain.IterDataset:
  """Whole test images, batch size 1, centre-cropped to multiples of 16, in file order.

  Items: {'degraded', 'clean': float32 (1, H, W, 3), 'name', 'dataset', 'task', 'degradation':
  str, 'sigma': int}. Prefetch is kept short: whole images are large.
  """
  source = datasets.data_source("test", eval_set.spec, data_config.data_dir)
  dataset = grain.MapDataset.source(source).map_with_index(_EvalExample(eval_set, int(seed)))
  return dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))


# ----------------------------------------------------------------------------
# A run's data config.


def per_process_batch(global_batch: int) -> int:
  """This process's share of data.batch_size, the global batch (as big_vision's)."""
  import jax  # pylint: disable=g-import-not-at-top

  devices = jax.device_count()
  if global_batch % devices:
    raise ValueError(
        f"config.data.batch_size={global_batch} is the global batch and must "
        f"divide over all {devices} devices ({jax.process_count()} process(es)): "
        f"use a multiple of {devices}"
    )
  return global_batch // jax.process_count()


def run_data_config(config, workdir: str):
  """config.data as this module reads it: the per-process batch, the demo's sets and folders."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  data = ml_collections.ConfigDict(config.data.to_dict())
  data.batch_size = per_process_batch(config.data.batch_size)
  if data.demo:
    data.manual_dir = data.manual_dir or os.path.join(workdir, "demo", "raw")
    data.data_dir = data.data_dir or os.path.join(workdir, "demo", "tfds")
    data.train_sets = tuple(data.train_sets) or demo_data.DEMO_TRAIN_SETS
    data.test_sets = tuple(data.test_sets) or demo_data.DEMO_TEST_SETS
  return data


def ensure_demo_data(data) -> None:
  """Builds the demo's sets once (process 0), the others wait for them."""
  import jax  # pylint: disable=g-import-not-at-top

  if data.demo:
    if jax.process_index() == 0:
      demo_data.build_demo(data.manual_dir, data.data_dir)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices("demo_data")

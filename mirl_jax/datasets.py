"""TFDS builders that turn the MIR-L image tree into ArrayRecord datasets (no TensorFlow needed).

One builder config per image set, named `{split}_{task}_{set}`, e.g. `train_derain_rain100l`,
written under `data_dir/mirl_images/<config>/<version>/`. Records keep the sorted file order:

    clean     image: a plain RGB JPEG source's own bytes, else uncompressed PPM (fast to decode)
    degraded  image, same size as clean (derain/dehaze only: denoise noise is made on the fly)
    name      file stem (for pairs, NAME of NAME_rainy / NAME_gt)
    dataset   set name, e.g. 'Rain100L';   task   'denoise' | 'derain' | 'dehaze'

Config keys read by `prepare(data_config)` (an ml_collections.ConfigDict or any object with
these attributes):

    data.manual_dir   folder holding train/ and test/ as in EXPECTED_TREE
    data.data_dir     where the TFDS datasets are written
    data.train_sets   e.g. ('denoise/WED', 'denoise/BSD400', 'derain/Rain100L', 'dehaze/OTS')
    data.test_sets    e.g. ('denoise/BSD68', 'denoise/Urban100', 'derain/Rain100L', 'dehaze/SOTS')
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import re
from pathlib import Path

import tensorflow_datasets as tfds
import tqdm
from absl import logging

from mirl_jax import images

TASKS = ("denoise", "derain", "dehaze")
SPLITS = ("train", "test")
DEGRADED_SUFFIX = {"derain": "_rainy", "dehaze": "_hazy"}
PAIR_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

EXPECTED_TREE = """\
<manual_dir>/
  train/denoise/{WED,BSD400}/*.{jpg,png,bmp}          clean images only
  train/derain/Rain100L/{input/*_rainy.png, target/*_gt.png}
  train/dehaze/OTS/{input/*_hazy.jpg, target/*_gt.jpg}
  test/denoise/{BSD68,Urban100}/*
  test/derain/Rain100L/{input,target}
  test/dehaze/SOTS/{input/*_hazy.jpg, target/*_gt.png}
(pairs: input/NAME_rainy.EXT or NAME_hazy.EXT matches target/NAME_gt.EXT, EXT in .jpg .jpeg .png .bmp)"""


class DatasetLayoutError(FileNotFoundError):
  """The manual dir does not hold the folder a set needs."""


@dataclasses.dataclass(eq=False)
class SetConfig(tfds.core.BuilderConfig):
  """One image set of the tree: e.g. split='test', task='dehaze', set_name='SOTS'."""

  split: str = "train"
  task: str = "denoise"
  set_name: str = ""

  def __reduce__(self):
    # Unpickle (e.g. in Grain workers) to the registered instance: TFDS insists on identity.
    return set_config, (self.split, f"{self.task}/{self.set_name}")


def parse_set(spec: str) -> tuple[str, str]:
  """'derain/Rain100L' -> ('derain', 'Rain100L'), with a clear error for anything else."""
  task, _, set_name = str(spec).partition("/")
  if task not in TASKS or not set_name or "/" in set_name:
    raise ValueError(
        f'data set {spec!r}: expected "TASK/SET" with TASK one of {TASKS}, '
        f'e.g. "derain/Rain100L".'
    )
  return task, set_name


_CONFIGS: dict[str, SetConfig] = {}  # Configs made so far; sets are open-ended, not a fixed list.


def set_config(split: str, spec: str) -> SetConfig:
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}.")
  task, set_name = parse_set(spec)
  name = re.sub(r"[^a-z0-9_]+", "_", f"{split}_{task}_{set_name}".lower())
  config = _CONFIGS.get(name)
  if config is None or (config.split, config.task, config.set_name) != (split, task, set_name):
    config = SetConfig(
        name=name,
        version=MirlImages.VERSION,
        split=split,
        task=task,
        set_name=set_name,
        description=f"{split}/{task}/{set_name} of the MIR-L tree",
    )
    _CONFIGS[name] = config
  return config


def _require_dir(folder: Path, what: str) -> None:
  if not folder.is_dir():
    raise DatasetLayoutError(
        f"{folder}: missing folder ({what}); expected MIR-L's tree under data.manual_dir: "
        "{train,test}/<task>/<Set>/, rain and haze sets as input/NAME_rainy|_hazy.EXT with "
        'target/NAME_gt.EXT (datasets.EXPECTED_TREE; README: "Preparing the data")'
    )


def find_pairs(root: Path, task: str) -> list[tuple[str, Path, Path]]:
  """(NAME, degraded, clean) for each input/NAME_<suffix>.EXT with a target/NAME_gt.EXT."""
  suffix = DEGRADED_SUFFIX[task]
  for sub in ("input", "target"):
    _require_dir(root / sub, f"{sub} images of a {task} set")
  pairs, unmatched, misnamed = [], [], []
  for degraded in images.list_images(root / "input"):
    if not degraded.stem.endswith(suffix) or degraded.suffix.lower() not in PAIR_EXTENSIONS:
      misnamed.append(degraded.name)
      continue
    name = degraded.stem[: -len(suffix)]
    clean = next(
        (
            root / "target" / f"{name}_gt{ext}"
            for ext in PAIR_EXTENSIONS
            if (root / "target" / f"{name}_gt{ext}").is_file()
        ),
        None,
    )
    if clean is None:
      unmatched.append(degraded.name)
    else:
      pairs.append((name, degraded, clean))
  if misnamed:
    logging.warning(
        "%s: skipping %d input file(s) not named NAME%s.EXT (EXT in %s): %s",
        root / "input",
        len(misnamed),
        suffix,
        PAIR_EXTENSIONS,
        ", ".join(misnamed),
    )
  if unmatched:
    logging.warning(
        "%s: skipping %d input file(s) without a matching target/NAME_gt.EXT: %s",
        root / "input",
        len(unmatched),
        ", ".join(unmatched),
    )
  return pairs


def _encode_item(task: str, set_name: str, name: str, degraded: Path | None, clean: Path) -> dict:
  clean_bytes, clean_size = images.read_encoded_rgb(clean)
  example = {"clean": clean_bytes, "name": name, "dataset": set_name, "task": task}
  if degraded is not None:
    degraded_bytes, degraded_size = images.read_encoded_rgb(degraded)
    if degraded_size != clean_size:
      raise ValueError(
          f"pair of different sizes: {degraded} is {degraded_size[0]}x"
          f"{degraded_size[1]} but {clean} is {clean_size[0]}x{clean_size[1]} "
          f"(expected the same height x width)."
      )
    example["degraded"] = degraded_bytes
  return example


class MirlImages(tfds.core.GeneratorBasedBuilder):
  """All MIR-L image sets; pick one with `set_builder(split, 'task/Set', data_dir)`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: one config per (split, task, set)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put the MIR-L image tree in the manual dir:\n{EXPECTED_TREE}"

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    """None: nothing is downloaded. TFDS's default looks for a checksums file beside the source,
    which fails for namespace/editable installs and without `importlib_resources`
    (tensorflow/datasets#11212)."""
    return None

  @classmethod
  def get_builder_config(cls, name: str, version=None):
    """Knows the configs made by set_config, so TFDS does not warn about 'custom' configs."""
    return _CONFIGS.get(name) or super().get_builder_config(name, version)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "clean": tfds.features.Image(shape=(None, None, 3)),
        "name": tfds.features.Text(),
        "dataset": tfds.features.Text(),
        "task": tfds.features.Text(),
    }
    if self.builder_config.task != "denoise":
      features["degraded"] = tfds.features.Image(shape=(None, None, 3))
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True
    )  # Keep the sorted file order.

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = Path(dl_manager.manual_dir) / config.split / config.task / config.set_name
    _require_dir(root, f"{config.task} set {config.set_name}")
    if config.task == "denoise":
      items = [(path.stem, None, path) for path in images.list_images(root)]
    else:
      items = find_pairs(root, config.task)
    if not items:
      raise DatasetLayoutError(
          f"{root}: no usable images found; expected image files, or for "
          "rain and haze sets input/NAME_rainy|_hazy.EXT with "
          "target/NAME_gt.EXT (datasets.EXPECTED_TREE)"
      )
    return {config.split: self._generate_examples(items)}

  def _generate_examples(self, items):
    config = self.builder_config
    # Threads overlap image decoding/encoding; a bounded window of futures keeps the sorted
    # order without holding a whole set in memory.
    workers = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      window = collections.deque()
      for index, item in enumerate(items):
        window.append(pool.submit(_encode_item, config.task, config.set_name, *item))
        if len(window) >= 4 * workers:
          yield index - len(window) + 1, window.popleft().result()
      first = len(items) - len(window)
      for offset, future in enumerate(window):
        yield first + offset, future.result()


def set_builder(split: str, spec: str, data_dir: str | os.PathLike) -> MirlImages:
  """The builder of one set, e.g. set_builder('test', 'dehaze/SOTS', data_dir)."""
  return MirlImages(
      config=set_config(split, spec), data_dir=os.fspath(data_dir), file_format="array_record"
  )


def build_set(split: str, spec: str, manual_dir, data_dir) -> MirlImages:
  """Builds one set (no-op if already built at this version); returns its builder."""
  manual_dir = Path(manual_dir)
  _require_dir(manual_dir, "the manual dir")
  builder = set_builder(split, spec, data_dir)
  config = builder.builder_config
  # Checked here too, as TFDS asserts on an empty manual dir with a less helpful message.
  _require_dir(
      manual_dir / split / config.task / config.set_name, f"{config.task} set {config.set_name}"
  )
  builder.download_and_prepare(
      download_dir=os.path.join(os.fspath(data_dir), "downloads"),
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
  )
  return builder


def configured_sets(data_config) -> list[tuple[str, str]]:
  """(split, 'task/Set') for every set the config names, train first."""
  return [("train", spec) for spec in data_config.train_sets] + [
      ("test", spec) for spec in data_config.test_sets
  ]


def prepare(data_config) -> dict[tuple[str, str], MirlImages]:
  """Builds every set of data.train_sets and data.test_sets from data.manual_dir."""
  sets = configured_sets(data_config)
  for split, spec in sets:
    set_config(split, spec)  # Fail on a bad name before any long build.
  root = Path(data_config.manual_dir)
  missing = [f"{split}/{spec}" for split, spec in sets if not (root / split / spec).is_dir()]
  if missing:
    raise DatasetLayoutError(
        f'{root}: no folder for {len(missing)} of the {len(sets)} sets ({", ".join(missing)}); '
        "expected MIR-L's tree under data.manual_dir (datasets.EXPECTED_TREE; README: "
        '"Preparing the data")'
    )
  built = {}
  for split, spec in tqdm.tqdm(sets, desc="Preparing data sets", unit="set"):
    built[(split, spec)] = build_set(split, spec, data_config.manual_dir, data_config.data_dir)
  return built


def data_source(split: str, spec: str, data_dir):
  """Random-access source of a built set; a clear error if it was not prepared.

  Images come back as their stored bytes: decode with images.decode_rgb, which views PPM
  without copying (TFDS would decode every image fully through Pillow).
  """
  builder = set_builder(split, spec, data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"data set {split}/{spec} is not prepared in {data_dir} (expected "
        f"{builder.data_dir}); run `python -m mirl_jax.main --mode prepare` first."
    )
  skip = {
      key: tfds.decode.SkipDecoding()
      for key in ("clean", "degraded")
      if key in builder.info.features
  }
  return builder.as_data_source(split=split, decoders=skip)

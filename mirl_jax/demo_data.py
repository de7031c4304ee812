"""A small MIR-L-shaped demo tree made offline from the photographs bundled with scikit-image.

It exists so that the demo config and the tests exercise the real code path: `build_demo` writes
image files laid out as datasets.EXPECTED_TREE, then builds them with the same TFDS builders as
real data. Denoise sets hold clean images only (the pipeline adds noise); rain is drawn as thin,
bright, oriented streaks; haze follows the scattering model I = J t + A (1 - t), t = exp(-beta d),
with the motorcycle's bundled disparity as depth and a smooth random field elsewhere. Train and
test use different source photographs; each test photo enters whole and as three crops of half
its sides at the same scale, so that every test set holds 8 images for less than twice the
pixels of the two whole photos. Everything is deterministic.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage import draw

from mirl_jax import datasets, images

DEMO_VERSION = "3"  # Bump when the generated images change.
DEMO_TRAIN_SETS = ("denoise/DemoClean", "derain/DemoRain", "dehaze/DemoHaze")
DEMO_TEST_SETS = ("denoise/DemoClean", "derain/DemoRain", "dehaze/DemoHaze")
# Colour photographs shipped inside the scikit-image wheel (no download), split by source.
TRAIN_SOURCES = ("astronaut.png", "coffee.png", "rocket.jpg", "ihc.png", "hubble_deep_field.jpg")
TEST_SOURCES = ("chelsea.png", "motorcycle_left.png")
VARIANTS = {"train": 2, "test": 4}  # Degraded variants (different seeds/crops) per source.
LONG_SIDE = 256
SPLITS_INDEX = {"train": 0, "test": 1}
_MARKER = "MIRL_DEMO_VERSION"


def _bundled(name: str) -> Path:
  return Path(os.path.dirname(skimage.data.__file__)) / name


def _resize(image: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
  h, w = image.shape[:2]
  scale = long_side / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _random_crop(image: np.ndarray, rng: np.random.Generator, fraction: float = 0.8):
  """A random crop keeping `fraction` of each side: variants of one photo differ."""
  h, w = image.shape[:2]
  ch, cw = int(h * fraction), int(w * fraction)
  top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
  return (slice(top, top + ch), slice(left, left + cw))


def add_rain(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Thin bright streaks of random density, length and angle, screen-blended onto `clean`."""
  h, w = clean.shape[:2]
  streaks = np.zeros((h, w), np.float32)
  count = int(rng.uniform(0.004, 0.012) * h * w)
  angle = rng.uniform(-0.5, 0.5)  # Radians from vertical, shared by a picture's streaks.
  length = rng.uniform(8, 24, size=count)
  theta = angle + rng.normal(0, 0.04, size=count)
  r0, c0 = rng.uniform(-20, h, size=count), rng.uniform(-20, w + 20, size=count)
  r1, c1 = r0 + length * np.cos(theta), c0 + length * np.sin(theta)
  brightness = rng.uniform(0.5, 1.0, size=count)
  for k in range(count):
    rr, cc, val = draw.line_aa(int(r0[k]), int(c0[k]), int(r1[k]), int(c1[k]))
    keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    np.maximum.at(streaks, (rr[keep], cc[keep]), val[keep] * brightness[k])
  streaks = ndimage.gaussian_filter(streaks, 0.5) * rng.uniform(0.6, 0.9)
  image = clean.astype(np.float32) / 255.0
  rainy = 1.0 - (1.0 - image) * (1.0 - streaks[..., None])
  return np.clip(np.rint(rainy * 255.0), 0, 255).astype(np.uint8)


def smooth_depth(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """Depth in [0, 1], far at the top: a vertical ramp plus a smooth random field."""
  h, w = shape
  ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
  field = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(h, w) / 8)
  field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
  depth = 0.7 * ramp + 0.3 * field
  return (depth - depth.min()) / max(float(np.ptp(depth)), 1e-6)


def disparity_depth() -> np.ndarray:
  """Depth in [0, 1] of motorcycle_left from its bundled disparity (unknown = farthest)."""
  disparity = np.load(_bundled("motorcycle_disp.npz"))["arr_0"].astype(np.float64)
  valid = np.isfinite(disparity) & (disparity > 0)
  depth = np.where(valid, 1.0 / np.where(valid, disparity, 1.0), np.nan)
  depth = np.where(valid, depth, np.nanmax(depth))
  return ((depth - depth.min()) / max(float(np.ptp(depth)), 1e-12)).astype(np.float32)


def add_haze(clean: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """I = J t + A (1 - t) with t = exp(-beta * depth), random beta and grey-ish airlight A."""
  beta = rng.uniform(0.8, 2.0)
  airlight = rng.uniform(0.75, 1.0) + rng.uniform(-0.03, 0.03, size=3)
  t = np.exp(-beta * depth)[..., None]
  hazy = clean.astype(np.float32) / 255.0 * t + airlight * (1.0 - t)
  return np.clip(np.rint(hazy * 255.0), 0, 255).astype(np.uint8)


def write_tree(manual_dir: str | os.PathLike, seed: int = 0) -> None:
  """Writes the demo images under manual_dir in the layout of datasets.EXPECTED_TREE."""
  root = Path(manual_dir)
  for split, sources in (("train", TRAIN_SOURCES), ("test", TEST_SOURCES)):
    for source_index, source in enumerate(sources):
      photo = images.read_rgb(_bundled(source))
      depth = disparity_depth() if source == "motorcycle_left.png" else None
      for variant in range(VARIANTS[split]):
        rng = np.random.default_rng([seed, SPLITS_INDEX[split], source_index, variant])
        if split == "train":
          (rows, cols), long_side = _random_crop(photo, rng), LONG_SIDE
        elif variant == 0:  # a test photo whole, then crops of half its sides at its scale
          (rows, cols), long_side = (slice(None),) * 2, LONG_SIDE
        else:
          (rows, cols), long_side = _random_crop(photo, rng, 0.5), LONG_SIDE // 2
        clean = _resize(photo[rows, cols], long_side)
        name = f"{Path(source).stem}_{variant}"
        images.write_png(root / split / "denoise" / "DemoClean" / f"{name}.png", clean)
        rain_dir = root / split / "derain" / "DemoRain"
        images.write_png(rain_dir / "target" / f"{name}_gt.png", clean)
        images.write_png(rain_dir / "input" / f"{name}_rainy.png", add_rain(clean, rng))
        if depth is None:
          scene_depth = smooth_depth(clean.shape[:2], rng)
        else:
          resized = Image.fromarray(depth[rows, cols]).resize(
              clean.shape[1::-1], Image.Resampling.BILINEAR
          )
          scene_depth = np.asarray(resized)
        haze_dir = root / split / "dehaze" / "DemoHaze"
        images.write_png(haze_dir / "target" / f"{name}_gt.png", clean)
        images.write_png(haze_dir / "input" / f"{name}_hazy.png", add_haze(clean, scene_depth, rng))


def _marker_matches(folder: Path) -> bool:
  marker = folder / _MARKER
  return marker.is_file() and marker.read_text().strip() == DEMO_VERSION


def build_demo(manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> None:
  """Writes the demo tree and builds its TFDS sets; a no-op when this version is already there.

  A version marker is written last in each folder, so an interrupted build is redone.
  """
  manual_dir, data_dir = Path(manual_dir), Path(data_dir)
  if not _marker_matches(manual_dir):
    for split in ("train", "test"):
      shutil.rmtree(manual_dir / split, ignore_errors=True)
    write_tree(manual_dir)
    (manual_dir / _MARKER).write_text(DEMO_VERSION)
  if not _marker_matches(data_dir):
    for split, spec in demo_sets():  # Drop sets built from an older demo tree.
      shutil.rmtree(datasets.set_builder(split, spec, data_dir).data_dir, ignore_errors=True)
  for split, spec in demo_sets():
    datasets.build_set(split, spec, manual_dir, data_dir)
  (data_dir / _MARKER).write_text(DEMO_VERSION)


def demo_sets() -> list[tuple[str, str]]:
  return [("train", spec) for spec in DEMO_TRAIN_SETS] + [("test", spec) for spec in DEMO_TEST_SETS]

"""Tests of mirl_jax.demo_data: an offline, deterministic tree that goes through the real builders."""

import time

import numpy as np
import pytest

from mirl_jax import datasets, demo_data, images


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  start = time.perf_counter()
  demo_data.build_demo(root / "manual", root / "data")
  return root, time.perf_counter() - start


def test_sources_are_bundled_and_split_by_photo():
  assert not set(demo_data.TRAIN_SOURCES) & set(demo_data.TEST_SOURCES)
  for name in demo_data.TRAIN_SOURCES + demo_data.TEST_SOURCES:
    assert demo_data._bundled(name).is_file(), name  # Shipped in the wheel: no download.


def test_builds_quickly_all_three_tasks(demo):
  root, seconds = demo
  assert seconds < 20
  for split, spec in demo_data.demo_sets():
    source = datasets.data_source(split, spec, root / "data")
    task = spec.split("/")[0]
    expected = len(demo_data.TRAIN_SOURCES if split == "train" else demo_data.TEST_SOURCES)
    assert len(source) == expected * demo_data.VARIANTS[split], (split, spec)
    record = source[0]
    assert record["task"].decode() == task
    clean = images.decode_rgb(record["clean"])
    assert max(clean.shape[:2]) in (demo_data.LONG_SIDE, demo_data.LONG_SIDE // 2)
    if task != "denoise":
      assert images.decode_rgb(record["degraded"]).shape == clean.shape


def test_train_and_test_names_are_disjoint(demo):
  root, _ = demo

  def stems(split):
    source = datasets.data_source(split, "denoise/DemoClean", root / "data")
    return {r["name"].decode().rsplit("_", 1)[0] for r in source}

  assert stems("train") and stems("test") and not stems("train") & stems("test")


def test_rain_is_sparse_bright_streaks(demo):
  root, _ = demo
  for record in datasets.data_source("train", "derain/DemoRain", root / "data"):
    diff = images.decode_rgb(record["degraded"]).astype(int) - images.decode_rgb(
        record["clean"]
    ).astype(int)
    assert diff.min() >= -1  # Screen blend only brightens (up to rounding).
    changed = (diff.max(-1) > 10).mean()
    assert 0.01 < changed < 0.6  # Streaks, not a global change.


def test_haze_lowers_contrast_towards_airlight(demo):
  root, _ = demo
  for record in datasets.data_source("test", "dehaze/DemoHaze", root / "data"):
    hazy = images.decode_rgb(record["degraded"]).astype(float)
    clean = images.decode_rgb(record["clean"]).astype(float)
    assert hazy.std() < clean.std()
    assert hazy.mean() > clean.mean()


def test_haze_model_limits():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  near = demo_data.add_haze(clean, np.zeros((8, 8), np.float32), np.random.default_rng(1))
  np.testing.assert_array_equal(near, clean)  # t = 1 at depth 0.
  far = demo_data.add_haze(clean, np.full((8, 8), 50.0, np.float32), np.random.default_rng(1))
  assert np.ptp(far) <= 255 * 0.07  # t -> 0: only the airlight remains.
  depth = demo_data.smooth_depth((32, 48), np.random.default_rng(2))
  assert depth.min() == 0 and depth.max() == pytest.approx(1)
  assert depth[:4].mean() > depth[-4:].mean()  # Far at the top.


def test_tree_is_deterministic(tmp_path):
  demo_data.write_tree(tmp_path / "a")
  demo_data.write_tree(tmp_path / "b")
  files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
  files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
  assert files_a == files_b and len(files_a) == 5 * (5 * 2 + 2 * 4)  # 5 files per image.
  for rel in files_a:
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
  clean = images.read_rgb(tmp_path / "a" / "test/denoise/DemoClean/chelsea_0.png")
  rain = [demo_data.add_rain(clean, np.random.default_rng(seed)) for seed in (0, 0, 1)]
  assert np.array_equal(rain[0], rain[1]) and not np.array_equal(rain[0], rain[2])


def test_build_demo_is_idempotent_and_versioned(demo, monkeypatch):
  root, _ = demo
  image = root / "manual" / "test" / "denoise" / "DemoClean" / "chelsea_0.png"
  stamp = image.stat().st_mtime_ns
  start = time.perf_counter()
  demo_data.build_demo(root / "manual", root / "data")
  assert time.perf_counter() - start < 2 and image.stat().st_mtime_ns == stamp
  monkeypatch.setattr(demo_data, "DEMO_VERSION", "next")
  demo_data.build_demo(root / "manual", root / "data")  # A new version rewrites and rebuilds.
  assert image.stat().st_mtime_ns != stamp
  assert (root / "data" / demo_data._MARKER).read_text() == "next"
  assert len(datasets.data_source("test", "denoise/DemoClean", root / "data")) == 8


def test_motorcycle_depth_from_bundled_disparity():
  depth = demo_data.disparity_depth()
  assert depth.shape == (500, 741) and np.isfinite(depth).all()
  assert depth.min() == 0 and depth.max() == pytest.approx(1)
  disparity = np.load(demo_data._bundled("motorcycle_disp.npz"))["arr_0"]
  unknown = ~np.isfinite(disparity)
  assert unknown.any() and np.all(depth[unknown] == depth.max())  # Unknown: farthest.
  known = np.isfinite(disparity) & (disparity > 0)
  near, far = np.argmax(np.where(known, disparity, -1)), np.argmin(np.where(known, disparity, 1e9))
  assert depth.flat[near] < depth.flat[far]


def test_every_test_set_holds_8_images_each_photo_whole_and_cropped(demo):
  """Test photos enter whole and as three crops of half their sides (the bit-identity test of test_train.py shows
  the training sets unchanged)."""
  root, _ = demo
  for spec in demo_data.DEMO_TEST_SETS:
    names = sorted(r["name"].decode() for r in datasets.data_source("test", spec, root / "data"))
    assert len(names) == 8 and len(set(names)) == 8, (spec, names)
  folder = root / "manual" / "test" / "denoise" / "DemoClean"
  whole, crop = (images.read_rgb(folder / f"chelsea_{v}.png") for v in (0, 1))
  photo = images.read_rgb(demo_data._bundled("chelsea.png"))
  assert whole.shape[0] / whole.shape[1] == pytest.approx(photo.shape[0] / photo.shape[1], 0.01)
  assert max(whole.shape[:2]) == demo_data.LONG_SIDE
  assert crop.shape[:2] == tuple(round(side / 2) for side in whole.shape[:2])  # same scale

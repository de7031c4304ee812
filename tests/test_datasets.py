"""Tests of mirl_jax.datasets: the TFDS builders on small trees made here, and every bad input."""

import logging
import pathlib
import pickle
import types

import numpy as np
import pytest
from PIL import Image

from mirl_jax import datasets, images


def _rgb(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array, mode=None, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode=mode).save(path, **kwargs)


def _pair_dir(root, split, task, name):
  return root / split / task / name


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """A small tree in every supported layout, built once for the module."""
  root = tmp_path_factory.mktemp("manual")
  clean = root / "train" / "denoise" / "Mixed"
  _save(clean / "a.png", _rgb(20, 30, 0))
  _save(clean / "b.jpg", _rgb(20, 30, 1), quality=95)
  _save(clean / "c.bmp", _rgb(18, 25, 2))
  _save(clean / "d_gray.png", _rgb(20, 30, 3)[..., 0], mode="L")
  rgba = np.concatenate([_rgb(20, 30, 4), np.full((20, 30, 1), 9, np.uint8)], -1)
  _save(clean / "e_rgba.png", rgba, mode="RGBA")
  Image.fromarray(_rgb(20, 30, 5)).convert("P").save(clean / "f_pal.png")
  _save(clean / "g_16.png", (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100))
  (clean / "readme.txt").write_text("not an image")
  rain = _pair_dir(root, "train", "derain", "Rain")
  _save(rain / "input" / "x_rainy.png", _rgb(16, 24, 10))
  _save(rain / "target" / "x_gt.png", _rgb(16, 24, 11))
  _save(rain / "input" / "y_rainy.jpg", _rgb(16, 24, 12))
  _save(rain / "target" / "y_gt.bmp", _rgb(16, 24, 13))
  _save(rain / "input" / "orphan_rainy.png", _rgb(16, 24, 14))
  _save(rain / "input" / "misnamed.png", _rgb(16, 24, 15))
  haze = _pair_dir(root, "test", "dehaze", "Haze")
  _save(haze / "input" / "p_hazy.jpg", _rgb(17, 33, 20))
  _save(haze / "target" / "p_gt.png", _rgb(17, 33, 21))
  return root


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("data")
  config = types.SimpleNamespace(
      manual_dir=str(tree),
      data_dir=str(data_dir),
      train_sets=["denoise/Mixed", "derain/Rain"],
      test_sets=["dehaze/Haze"],
  )
  datasets.prepare(config)
  return config


def test_clean_set_records_match_files_in_sorted_order(built, tree):
  source = datasets.data_source("train", "denoise/Mixed", built.data_dir)
  names = [source[i]["name"].decode() for i in range(len(source))]
  assert names == ["a", "b", "c", "d_gray", "e_rgba", "f_pal", "g_16"]
  files = images.list_images(tree / "train" / "denoise" / "Mixed")
  for i, path in enumerate(files):
    record = source[i]
    pixels = images.decode_rgb(record["clean"])
    assert pixels.dtype == np.uint8 and pixels.shape[-1] == 3
    np.testing.assert_array_equal(pixels, images.read_rgb(path))
    assert record["dataset"] == b"Mixed" and record["task"] == b"denoise"
    assert "degraded" not in record


def test_pair_set_matches_gt_of_any_extension(built, tree):
  source = datasets.data_source("train", "derain/Rain", built.data_dir)
  assert len(source) == 2
  rain = tree / "train" / "derain" / "Rain"
  for record, name, gt in zip(source, ["x", "y"], ["x_gt.png", "y_gt.bmp"]):
    assert record["name"].decode() == name and record["task"] == b"derain"
    np.testing.assert_array_equal(
        images.decode_rgb(record["degraded"]),
        images.read_rgb(next((rain / "input").glob(f"{name}_rainy.*"))),
    )
    np.testing.assert_array_equal(
        images.decode_rgb(record["clean"]), images.read_rgb(rain / "target" / gt)
    )


def test_test_split_set(built):
  source = datasets.data_source("test", "dehaze/Haze", built.data_dir)
  assert len(source) == 1 and images.decode_rgb(source[0]["clean"]).shape == (17, 33, 3)
  assert source[0]["dataset"] == b"Haze"


def test_unmatched_and_misnamed_inputs_are_warned_and_skipped(tree, caplog):
  with caplog.at_level(logging.WARNING):
    pairs = datasets.find_pairs(tree / "train" / "derain" / "Rain", "derain")
  assert [name for name, _, _ in pairs] == ["x", "y"]
  text = caplog.text
  assert "orphan_rainy.png" in text and "without a matching target/NAME_gt" in text
  assert "misnamed.png" in text


def test_prepare_twice_does_not_rebuild(built):
  builder = datasets.set_builder("train", "denoise/Mixed", built.data_dir)
  info = pathlib.Path(builder.data_dir) / "dataset_info.json"
  stamp = info.stat().st_mtime_ns
  datasets.prepare(built)
  assert info.stat().st_mtime_ns == stamp


def _build(manual, data_dir, split, spec):
  return datasets.build_set(split, spec, manual, data_dir)


def _nothing_finished(data_dir):
  return not list(data_dir.rglob("dataset_info.json")) and not list(data_dir.rglob("*incomplete*"))


def test_corrupt_image_stops_build_and_leaves_no_dataset(tmp_path):
  folder = tmp_path / "m" / "train" / "denoise" / "Bad"
  for i in range(12):
    _save(folder / f"ok{i:02d}.png", _rgb(8, 8, i))
  _save(folder / "z_cut.png", _rgb(64, 64, 99))
  data = (folder / "z_cut.png").read_bytes()
  (folder / "z_cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(images.ImageReadError, match="z_cut.png"):
    _build(tmp_path / "m", tmp_path / "d", "train", "denoise/Bad")
  assert not datasets.set_builder("train", "denoise/Bad", tmp_path / "d").is_prepared()
  assert _nothing_finished(tmp_path / "d")


def test_pair_of_different_sizes_names_both_files(tmp_path):
  root = tmp_path / "m" / "test" / "derain" / "Odd"
  _save(root / "input" / "k_rainy.png", _rgb(10, 12, 0))
  _save(root / "target" / "k_gt.jpg", _rgb(10, 13, 1))
  with pytest.raises(ValueError, match=r"k_rainy.png is 10x12 but .*k_gt.jpg is 10x13"):
    _build(tmp_path / "m", tmp_path / "d", "test", "derain/Odd")
  assert _nothing_finished(tmp_path / "d")


def test_missing_folder_error_shows_expected_tree(tmp_path):
  (tmp_path / "m").mkdir()
  with pytest.raises(datasets.DatasetLayoutError, match="Rain100L") as error:
    _build(tmp_path / "m", tmp_path / "d", "train", "derain/Rain100L")
  assert "train/derain/Rain100L" in str(error.value) and "\n" not in str(error.value)
  assert "input/NAME_rainy|_hazy.EXT with target/NAME_gt.EXT" in str(error.value)
  # A set folder without its input/ subfolder.
  (tmp_path / "m" / "train" / "dehaze" / "OTS" / "target").mkdir(parents=True)
  with pytest.raises(datasets.DatasetLayoutError, match="OTS/input"):
    _build(tmp_path / "m", tmp_path / "d", "train", "dehaze/OTS")


def test_missing_manual_dir_and_empty_set(tmp_path):
  with pytest.raises(datasets.DatasetLayoutError, match="manual dir"):
    _build(tmp_path / "absent", tmp_path / "d", "train", "denoise/WED")
  (tmp_path / "m" / "train" / "denoise" / "Empty").mkdir(parents=True)
  with pytest.raises(datasets.DatasetLayoutError, match="no usable images"):
    _build(tmp_path / "m", tmp_path / "d", "train", "denoise/Empty")


@pytest.mark.parametrize("spec", ["Rain100L", "rain/Rain100L", "derain/", "derain/a/b"])
def test_bad_set_names_are_rejected(spec):
  with pytest.raises(ValueError, match='expected "TASK/SET"'):
    datasets.set_config("train", spec)
  with pytest.raises(ValueError, match="split"):
    datasets.set_config("val", "derain/Rain100L")


def test_unprepared_set_tells_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="--mode prepare"):
    datasets.data_source("test", "denoise/BSD68", tmp_path)


def test_config_names_are_stable_and_versioned():
  config = datasets.set_config("train", "derain/Rain100L")
  assert config.name == "train_derain_rain100l" and str(config.version) == "1.0.0"
  assert datasets.set_config("train", "derain/Rain100L") is config


def test_sources_survive_pickling_in_the_same_process(built):
  # Grain pickles sources into its workers; TFDS rebuilds the builder on unpickling.
  source = datasets.data_source("train", "derain/Rain", built.data_dir)
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == len(source) and copy[1]["clean"] == source[1]["clean"]

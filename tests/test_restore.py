"""Restoring user image files: padding, tiling, odd inputs, no partial outputs."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from mirl_jax import models
from mirl_jax import restore


def _recording(fn):
  shapes = []

  def forward(x):
    shapes.append(x.shape)
    return fn(x)
  return forward, shapes


def test_whole_image_is_padded_to_multiple_of_8_and_cropped_back():
  image = np.random.default_rng(0).random((37, 53, 3)).astype(np.float32)
  forward, shapes = _recording(lambda x: 1 - x)
  out = restore.restore_array(forward, image, tile=512)
  assert shapes == [(1, 40, 56, 3)]
  np.testing.assert_allclose(out, 1 - image, atol=1e-6)


def test_tiles_share_one_shape_and_blend_seamlessly():
  image = np.random.default_rng(1).random((100, 70, 3)).astype(np.float32)
  forward, shapes = _recording(lambda x: 0.5 * x + 0.25)
  out = restore.restore_array(forward, image, tile=32, overlap=8)
  assert set(shapes) == {(1, 32, 32, 3)} and len(shapes) == 4 * 3  # 104 and 72 padded rows and columns
  np.testing.assert_allclose(out, 0.5 * image + 0.25, atol=1e-6)


def test_tiling_covers_every_pixel_with_a_real_network():
  model = models.PromptIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                          heads=(1, 1, 1, 1), prompt_dims=(8, 8, 8),
                          prompt_sizes=(4, 4, 4), noise_level_heads=1)
  forward = restore.make_forward(model, models.init_params(model, jax.random.key(0)))
  image = np.random.default_rng(2).random((72, 40, 3)).astype(np.float32)
  whole = restore.restore_array(forward, image, tile=512)
  tiled = restore.restore_array(forward, image, tile=32, overlap=8)
  assert tiled.shape == image.shape and np.isfinite(tiled).all()
  # Tiles see less context (global prompt weights, channel attention), so they
  # differ somewhat from the whole-image pass, but not grossly.
  assert np.abs(tiled - whole).mean() < 0.05


def test_bad_tile_settings_are_rejected():
  with pytest.raises(ValueError, match="multiples of 8"):
    restore.restore_array(lambda x: x, np.zeros((8, 8, 3), np.float32), tile=100)


def _write_odd_images(folder):
  rng = np.random.default_rng(3)
  folder.mkdir()
  Image.fromarray((rng.random((21, 30)) * 255).astype(np.uint8), "L").save(folder / "gray.png")
  Image.fromarray((rng.random((16, 17, 4)) * 255).astype(np.uint8), "RGBA").save(
      folder / "rgba.png")
  Image.fromarray((rng.random((12, 19)) * 65535).astype(np.uint16)).save(folder / "deep.png")
  Image.fromarray((rng.random((33, 9, 3)) * 255).astype(np.uint8)).save(folder / "photo.jpg")
  return {"gray": (21, 30), "rgba": (16, 17), "deep": (12, 19), "photo": (33, 9)}


def test_restore_files_handles_folders_and_odd_modes(tmp_path):
  sizes = _write_odd_images(tmp_path / "in")
  out = tmp_path / "out"
  written = restore.restore_files(lambda x: x, [str(tmp_path / "in")], str(out))
  assert sorted(p.stem for p in written) == sorted(sizes)
  for name, (h, w) in sizes.items():
    with Image.open(out / f"{name}.png") as image:
      assert image.mode == "RGB" and image.size == (w, h)
    assert os.stat(out / f"{name}.png").st_mode & 0o044  # readable by others
  assert sorted(os.listdir(out)) == sorted(f"{n}.png" for n in sizes)  # no temp files


def test_bad_inputs_stop_before_any_output(tmp_path):
  _write_odd_images(tmp_path / "in")
  (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="broken.png"):
    restore.restore_files(lambda x: x, [str(tmp_path / "in")], str(out))
  assert not out.exists() or not os.listdir(out)
  with pytest.raises(ValueError, match="Input not found: .*nothere.png"):
    restore.restore_files(lambda x: x, [str(tmp_path / "nothere.png")], str(out))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No image files"):
    restore.restore_files(lambda x: x, [str(tmp_path / "empty")], str(out))
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "gray.jpg").write_bytes((tmp_path / "in" / "photo.jpg").read_bytes())
  with pytest.raises(ValueError, match="share the name"):
    restore.restore_files(lambda x: x, [str(tmp_path / "in" / "gray.png"),
                                        str(tmp_path / "other")], str(out))

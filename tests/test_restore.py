"""Restoring user image files: padding, tiling, odd inputs, no partial outputs, no overwrites."""

import io
import os

import jax
import numpy as np
import png
import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from conftest import TINY
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
  assert (
      set(shapes) == {(1, 32, 32, 3)} and len(shapes) == 4 * 3
  )  # 104 and 72 padded rows and columns
  np.testing.assert_allclose(out, 0.5 * image + 0.25, atol=1e-6)


def test_tiling_covers_every_pixel_with_a_real_network():
  forward = restore.make_forward(TINY, models.init_params(TINY, jax.random.key(0)))
  image = np.random.default_rng(2).random((72, 40, 3)).astype(np.float32)
  whole = restore.restore_array(forward, image, tile=512)
  tiled = restore.restore_array(forward, image, tile=32, overlap=8)
  assert tiled.shape == image.shape and np.isfinite(tiled).all()
  # Tiles see less context (global prompt weights, channel attention), so they
  # differ somewhat from the whole-image pass, but not grossly.
  assert np.abs(tiled - whole).mean() < 0.05


def test_the_forward_compiled_before_the_params_exist_is_the_one_that_runs():
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, *_, **__: compiles.append(event)
      if event.endswith("backend_compile_duration")
      else None
  )
  image = np.random.default_rng(4).random((37, 53, 3)).astype(np.float32)
  shape = restore.input_shape(image.shape[:2], 512)
  assert shape == (1, 40, 56, 3) and restore.input_shape((100, 70), 32) == (1, 32, 32, 3)
  restore.compile_forward(TINY, [shape])
  compiled = len(compiles)
  params = models.init_params(TINY, jax.random.key(0))
  out = restore.restore_array(restore.make_forward(TINY, params), image, tile=512)
  assert compiled >= 1 and len(compiles) == compiled  # no second compile for the real params
  want = TINY.apply({"params": params}, restore._pad_to_multiple(image)[None])[0, :37, :53]
  np.testing.assert_allclose(out, np.clip(want, 0, 1), atol=1e-5)


def test_bad_tile_settings_are_rejected():
  with pytest.raises(ValueError, match="multiples of 8"):
    restore.restore_array(lambda x: x, np.zeros((8, 8, 3), np.float32), tile=100)


def _write_odd_images(folder):
  rng = np.random.default_rng(3)
  folder.mkdir()
  Image.fromarray((rng.random((21, 30)) * 255).astype(np.uint8), "L").save(folder / "gray.png")
  Image.fromarray((rng.random((16, 17, 4)) * 255).astype(np.uint8), "RGBA").save(
      folder / "rgba.png"
  )
  Image.fromarray((rng.random((12, 19)) * 65535).astype(np.uint16)).save(folder / "deep.png")
  Image.fromarray((rng.random((33, 9, 3)) * 255).astype(np.uint8)).save(folder / "photo.jpg")
  return {
      "gray.png": ((21, 30), "L"),
      "rgba.png": ((16, 17), "RGBA"),
      "deep.png": ((12, 19), "I;16"),
      "photo.jpg": ((33, 9), "RGB"),
  }


def _restore(inputs, out, forward=lambda x: x, **kwargs):
  jobs = restore.plan_outputs([str(i) for i in inputs], str(out), **kwargs)
  return restore.restore_files(forward, jobs, progress=False)


def _snapshot(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_restore_files_handles_folders_and_odd_modes(tmp_path):
  expected = _write_odd_images(tmp_path / "in")
  out = tmp_path / "out"
  written = _restore([tmp_path / "in"], out)
  assert sorted(p.name for p in written) == sorted(expected)
  for name, ((h, w), mode) in expected.items():
    with Image.open(out / name) as image:
      assert image.mode == mode and image.size == (w, h), name
    assert os.stat(out / name).st_mode & 0o044  # readable by others
  assert sorted(os.listdir(out)) == sorted(expected)  # no temp files


def test_bad_inputs_stop_before_any_output(tmp_path):
  _write_odd_images(tmp_path / "in")
  (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="broken.png"):
    restore.plan_outputs([str(tmp_path / "in")], str(out))
  with pytest.raises(ValueError, match="Input not found: .*nothere.png"):
    restore.plan_outputs([str(tmp_path / "nothere.png")], str(out))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No image files"):
    restore.plan_outputs([str(tmp_path / "empty")], str(out))
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "gray.png").write_bytes((tmp_path / "in" / "gray.png").read_bytes())
  with pytest.raises(ValueError, match="share the output name"):
    restore.plan_outputs([str(tmp_path / "in" / "gray.png"), str(tmp_path / "other")], str(out))
  (tmp_path / "other" / "photo.png").write_bytes((tmp_path / "in" / "gray.png").read_bytes())
  with pytest.raises(ValueError, match=r"share the output name.*photo\.png"):
    restore.plan_outputs(
        [str(tmp_path / "in" / "photo.jpg"), str(tmp_path / "other" / "photo.png")],
        str(out),
        fmt="png",
    )
  with pytest.raises(ValueError, match="format 'tiff' unknown"):
    restore.plan_outputs([str(tmp_path / "other")], str(out), fmt="tiff")
  with pytest.raises(ValueError, match="multiples of 8"):
    restore.restore_files(lambda x: x, [], tile=100)
  assert not out.exists()


def test_a_file_named_twice_is_restored_once(tmp_path):
  _write_odd_images(tmp_path / "in")
  jobs = restore.plan_outputs(
      [str(tmp_path / "in" / "gray.png"), str(tmp_path / "in")], str(tmp_path / "out")
  )
  assert sorted(j.target.name for j in jobs) == ["deep.png", "gray.png", "photo.jpg", "rgba.png"]


# ----------------------------------------------------------------------------
# Never overwrite a user's file.


def _refusals(tmp_path, monkeypatch):
  """(inputs, output_dir) pairs where the output folder is, or holds, an input."""
  monkeypatch.chdir(tmp_path)
  os.symlink(tmp_path / "in", tmp_path / "link")
  return [
      (["in"], "in"),
      (["in"], "./in"),
      (["./in/"], str(tmp_path / "in")),
      (["link"], "in"),
      (["in"], "link"),
      (["in"], "in/../in"),
      (["in/gray.png"], "in"),
      (["in/photo.jpg", "in/rgba.png"], "link"),
  ]


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_folder_that_is_or_holds_an_input_is_refused(tmp_path, monkeypatch, overwrite):
  _write_odd_images(tmp_path / "in")
  before = _snapshot(tmp_path / "in")
  for inputs, out in _refusals(tmp_path, monkeypatch):
    with pytest.raises(
        ValueError,
        match="(is the input folder|holds the input file).*--config.restore.output_dir",
    ):
      restore.plan_outputs(inputs, out, overwrite=overwrite)
  assert _snapshot(tmp_path / "in") == before
  assert sorted(os.listdir(tmp_path)) == ["in", "link"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
  _write_odd_images(tmp_path / "in")
  out = tmp_path / "out"
  out.mkdir()
  (out / "gray.png").write_bytes(b"mine")
  (out / "notes.txt").write_bytes(b"keep")
  with pytest.raises(ValueError, match=r"already exist: .*gray\.png.*overwrite=True"):
    restore.plan_outputs([str(tmp_path / "in")], str(out))
  assert (out / "gray.png").read_bytes() == b"mine"
  assert sorted(os.listdir(out)) == ["gray.png", "notes.txt"]
  written = _restore([tmp_path / "in"], out, overwrite=True)
  assert out / "gray.png" in written
  assert Image.open(out / "gray.png").mode == "L" and (out / "notes.txt").read_bytes() == b"keep"


def test_an_output_is_never_written_onto_an_input(tmp_path):
  _write_odd_images(tmp_path / "in")
  out = tmp_path / "out"
  out.mkdir()
  os.link(tmp_path / "in" / "gray.png", out / "gray.png")  # the same file under both names
  before = _snapshot(tmp_path / "in")
  with pytest.raises(ValueError, match="is the input file"):
    restore.plan_outputs([str(tmp_path / "in")], str(out), overwrite=True)
  assert _snapshot(tmp_path / "in") == before


def test_a_file_as_output_folder_is_refused(tmp_path):
  _write_odd_images(tmp_path / "in")
  (tmp_path / "out").write_bytes(b"x")
  with pytest.raises(ValueError, match="is a file"):
    restore.plan_outputs([str(tmp_path / "in")], str(tmp_path / "out"))


def test_planning_creates_nothing(tmp_path):
  _write_odd_images(tmp_path / "in")
  out = tmp_path / "deep" / "out"
  jobs = restore.plan_outputs([str(tmp_path / "in")], str(out))
  assert {j.target.parent for j in jobs} == {out} and not (tmp_path / "deep").exists()


# ----------------------------------------------------------------------------
# Images kept as they came.


def test_grey_stays_grey(tmp_path):
  (tmp_path / "in").mkdir()
  grey = np.random.default_rng(4).integers(0, 256, (19, 23), dtype=np.uint8)
  Image.fromarray(grey, "L").save(tmp_path / "in" / "g.png")
  Image.fromarray(grey > 127).save(tmp_path / "in" / "bits.png")  # mode "1"
  _restore([tmp_path / "in"], tmp_path / "out", lambda x: 1 - x)
  with Image.open(tmp_path / "out" / "g.png") as image:
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), 255 - grey)
  with Image.open(tmp_path / "out" / "bits.png") as image:
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), np.where(grey > 127, 0, 255))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_alpha_passes_through_bit_for_bit(tmp_path, mode):
  rng = np.random.default_rng(5)
  (tmp_path / "in").mkdir()
  channels = {"RGBA": 4, "LA": 2, "P": 1}[mode]
  pixels = rng.integers(0, 256, (14, 18, channels), dtype=np.uint8)
  if mode == "P":
    image = Image.fromarray(pixels[..., 0], "L").convert("P")
    image.save(tmp_path / "in" / "a.png", transparency=int(pixels[0, 0, 0]))
    want_alpha = np.asarray(Image.open(tmp_path / "in" / "a.png").convert("RGBA"))[..., 3]
    want_colour = 255 - np.asarray(Image.open(tmp_path / "in" / "a.png").convert("RGB"))
  else:
    Image.fromarray(pixels, mode).save(tmp_path / "in" / "a.png")
    want_alpha, want_colour = pixels[..., -1], 255 - pixels[..., :-1]
  _restore([tmp_path / "in"], tmp_path / "out", lambda x: 1 - x)
  with Image.open(tmp_path / "out" / "a.png") as image:
    assert image.mode == ("RGBA" if mode == "P" else mode)
    got = np.asarray(image)
  if mode == "P":  # the palette's transparent entry became alpha 0, the others 255
    assert {0, 255} == set(np.unique(want_alpha))
  np.testing.assert_array_equal(got[..., -1], want_alpha)
  np.testing.assert_array_equal(got[..., :-1], want_colour)


def _png16(path, pixels, greyscale, alpha=False):
  height, width = pixels.shape[:2]
  with open(path, "wb") as f:
    png.Writer(width, height, greyscale=greyscale, alpha=alpha, bitdepth=16).write(
        f, pixels.reshape(height, -1)
    )


@pytest.mark.parametrize("planes", [1, 3, 4])
def test_sixteen_bits_stay_sixteen_bits(tmp_path, planes):
  rng = np.random.default_rng(6)
  pixels = rng.integers(0, 65536, (13, 21, planes), dtype=np.uint16)
  pixels[0, :4, 0] = [0, 1, 65534, 65535]
  (tmp_path / "in").mkdir()
  _png16(tmp_path / "in" / "d.png", pixels, planes == 1, planes == 4)
  for forward, want in [(lambda x: x, pixels), (lambda x: 1 - x, 65535 - pixels)]:
    _restore([tmp_path / "in"], tmp_path / "out", forward, overwrite=True)
    width, height, rows, info = png.Reader(filename=str(tmp_path / "out" / "d.png")).read()
    assert info["bitdepth"] == 16 and info["planes"] == planes
    got = np.vstack([np.asarray(r, np.int64) for r in rows]).reshape(height, width, planes)
    colour = planes if planes < 4 else 3
    assert np.abs(got[..., :colour] - want[..., :colour]).max() <= (0 if want is pixels else 1)
    np.testing.assert_array_equal(got[..., colour:], pixels[..., colour:])  # alpha untouched


def _photo(h=96, w=128, seed=7):
  """A smooth scene with a little grain, as a camera would give."""
  y, x = np.mgrid[:h, :w] / np.float32(max(h, w))
  scene = np.stack([0.5 + 0.4 * np.sin(6 * x + 2 * y), 0.3 + 0.5 * y, 0.6 - 0.3 * x], -1)
  grain = np.random.default_rng(seed).normal(0, 0.01, scene.shape)
  return (np.clip(scene + grain, 0, 1) * 255).round().astype(np.uint8)


def test_jpeg_comes_back_as_a_close_jpeg_of_similar_size(tmp_path):
  (tmp_path / "in").mkdir()
  Image.fromarray(_photo()).save(tmp_path / "in" / "p.jpeg", quality=95)
  (written,) = _restore([tmp_path / "in"], tmp_path / "out")
  assert written.name == "p.jpg"
  with Image.open(written) as image:
    assert image.format == "JPEG" and image.mode == "RGB"
    got = np.asarray(image, np.float64)
  source = np.asarray(Image.open(tmp_path / "in" / "p.jpeg"), np.float64)
  psnr = 10 * np.log10(255**2 / np.mean((got - source) ** 2))
  assert psnr > 40, psnr
  assert written.stat().st_size <= 1.5 * (tmp_path / "in" / "p.jpeg").stat().st_size
  (as_png,) = _restore([tmp_path / "in"], tmp_path / "png", fmt="png")
  assert as_png.name == "p.png" and Image.open(as_png).format == "PNG"
  np.testing.assert_array_equal(np.asarray(Image.open(as_png)), source)


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_comes_back_as_webp(tmp_path, lossless):
  (tmp_path / "in").mkdir()
  pixels = np.concatenate([_photo(40, 56), np.full((40, 56, 1), 200, np.uint8)], -1)
  pixels[:5, :5, 3] = 0
  Image.fromarray(pixels).save(
      tmp_path / "in" / "w.webp", lossless=lossless, exact=True, quality=95
  )
  (written,) = _restore([tmp_path / "in"], tmp_path / "out")
  assert written.name == "w.webp"
  got = np.asarray(Image.open(written))
  np.testing.assert_array_equal(got[..., 3], pixels[..., 3])
  if lossless:
    np.testing.assert_array_equal(got, pixels)


def test_formats_that_cannot_hold_the_image_are_refused(tmp_path):
  _write_odd_images(tmp_path / "in")
  for name, what in [("rgba.png", "alpha"), ("deep.png", "16 bits")]:
    with pytest.raises(ValueError, match=f"{name}: has .*{what}.*format=png"):
      restore.plan_outputs([str(tmp_path / "in" / name)], str(tmp_path / "out"), fmt="jpg")
  jobs = restore.plan_outputs([str(tmp_path / "in" / "gray.png")], str(tmp_path / "out"), fmt="jpg")
  assert [(j.target.name, j.format) for j in jobs] == [("gray.jpg", "JPEG")]
  assert not (tmp_path / "out").exists()


def test_orientation_is_applied_and_no_metadata_is_carried(tmp_path):
  (tmp_path / "in").mkdir()
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  exif[0x013B] = "Jane Doe"  # Artist
  exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (52.0, 31.0, 0.0)}
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  Image.fromarray(_photo(40, 64)).save(
      tmp_path / "in" / "r.jpg", quality=95, exif=exif, icc_profile=icc
  )
  text = PngImagePlugin.PngInfo()
  text.add_text("Comment", "Jane Doe was here")
  Image.fromarray(_photo(8, 16)).save(tmp_path / "in" / "t.png", pnginfo=text, exif=exif)
  for fmt in ("same", "png", "jpg"):
    for path in _restore([tmp_path / "in"], tmp_path / fmt, fmt=fmt):
      data = path.read_bytes()
      assert b"Jane" not in data and b"Exif" not in data and b"ICC_PROFILE" not in data, path
      with Image.open(io.BytesIO(data)) as image:
        assert image.size == ((40, 64) if path.stem == "r" else (8, 16)), path
        assert not image.getexif() and "icc_profile" not in image.info, path
        assert not getattr(image, "text", {}), path


# ----------------------------------------------------------------------------
# Progress.


def test_progress_bars_go_to_stderr_and_can_be_silenced(tmp_path, capfd):
  (tmp_path / "in").mkdir()
  Image.fromarray(_photo(100, 70)).save(tmp_path / "in" / "big.png")
  jobs = restore.plan_outputs([str(tmp_path / "in")], str(tmp_path / "out"))
  restore.restore_files(lambda x: x, jobs, tile=32, overlap=8)
  captured = capfd.readouterr()
  assert captured.out == ""
  assert "big.png" in captured.err and "0/12" in captured.err and "tile" in captured.err
  assert "image" in captured.err
  jobs = restore.plan_outputs([str(tmp_path / "in")], str(tmp_path / "out"), overwrite=True)
  restore.restore_files(lambda x: x, jobs, tile=32, overlap=8, progress=False)
  assert capfd.readouterr() == ("", "")

"""Tests of mirl_jax.images: every common file layout becomes RGB uint8, bad files fail clearly;
user files for restoration are read and written back in kind."""

import errno
import io
import os

import numpy as np
import png
import pytest
from PIL import Image, ImageOps

from mirl_jax import images


def _rgb(h=5, w=7, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".PNG"])
def test_lossless_rgb_files_read_exactly(tmp_path, ext):
  pixels = _rgb()
  path = tmp_path / f"a{ext}"
  Image.fromarray(pixels).save(
      path, format={".png": "PNG", ".bmp": "BMP", ".tif": "TIFF"}[ext.lower()]
  )
  out = images.read_rgb(path)
  assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
  np.testing.assert_array_equal(out, pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path):
  gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
  Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
  out = images.read_rgb(tmp_path / "g.png")
  assert out.shape == (5, 7, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
  rgba = np.concatenate([_rgb(), np.zeros((5, 7, 1), np.uint8)], axis=-1)  # Fully transparent.
  Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
  np.testing.assert_array_equal(images.read_rgb(tmp_path / "a.png"), rgba[..., :3])


def test_palette_uses_palette_colours(tmp_path):
  image = Image.new("P", (4, 2))
  image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
  image.putdata([0, 1, 0, 1, 1, 1, 0, 0])
  image.save(tmp_path / "p.png")
  out = images.read_rgb(tmp_path / "p.png")
  np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
  np.testing.assert_array_equal(out[0, 1], [0, 255, 0])


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
  wide = np.array([[0, 1000, 25700, 65535]], dtype=np.uint16)
  Image.fromarray(wide).save(tmp_path / "w.png")
  with Image.open(tmp_path / "w.png") as check:
    assert check.mode.startswith("I")  # Really a 16-bit file.
  out = images.read_rgb(tmp_path / "w.png")
  np.testing.assert_array_equal(out[0, :, 0], [0, 4, 100, 255])  # 1000 -> 3.9 -> 4, not 255.
  assert out.shape == (1, 4, 3)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
  Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # Pure red in CMYK.
  out = images.read_rgb(tmp_path / "c.jpg")
  assert out.shape == (4, 6, 3)
  assert out[..., 0].min() > 200 and out[..., 1].max() < 60


def test_exif_orientation_is_applied(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  Image.fromarray(_rgb(4, 10)).save(tmp_path / "r.jpg", exif=exif)
  assert images.read_rgb(tmp_path / "r.jpg").shape == (10, 4, 3)
  data, size = images.read_encoded_rgb(tmp_path / "r.jpg")
  assert size == (10, 4) and _decode(data).shape == (10, 4, 3)


def test_missing_file_error_names_it(tmp_path):
  with pytest.raises(ValueError, match="nope.png.*no such image file"):
    images.read_rgb(tmp_path / "nope.png")


@pytest.mark.parametrize("fmt, ext", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file_error_names_it(tmp_path, fmt, ext):
  buffer = io.BytesIO()
  Image.fromarray(_rgb(64, 64)).save(buffer, format=fmt)
  path = tmp_path / f"cut{ext}"
  path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
  with pytest.raises(images.ImageReadError, match=f"cut{ext}.*expected a complete image"):
    images.read_rgb(path)


def test_non_image_error(tmp_path):
  (tmp_path / "x.jpg").write_text("not an image")
  with pytest.raises(images.ImageReadError, match="x.jpg"):
    images.read_encoded_rgb(tmp_path / "x.jpg")


def test_encoded_bytes_decode_to_read_rgb(tmp_path):
  pixels = _rgb(9, 11)
  Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=90)
  Image.fromarray(pixels).save(tmp_path / "b.png")
  Image.fromarray(pixels[..., 0], mode="L").save(tmp_path / "c.jpg")
  Image.fromarray(pixels).save(tmp_path / "d.bmp")
  for name in ("a.jpg", "b.png", "c.jpg", "d.bmp"):
    data, size = images.read_encoded_rgb(tmp_path / name)
    decoded = _decode(data)
    assert decoded.shape == (9, 11, 3) and size == (9, 11), name
    np.testing.assert_array_equal(decoded, images.read_rgb(tmp_path / name))
  # A plain RGB JPEG is kept byte for byte; the others are converted.
  assert images.read_encoded_rgb(tmp_path / "a.jpg")[0] == (tmp_path / "a.jpg").read_bytes()
  assert images.read_encoded_rgb(tmp_path / "b.png")[0].startswith(b"P6")


def test_write_png_round_trips_uint8_and_float(tmp_path):
  pixels = _rgb()
  images.write_png(tmp_path / "sub" / "u.png", pixels)
  images.write_png(tmp_path / "f.png", pixels.astype(np.float32) / 255.0)
  np.testing.assert_array_equal(images.read_rgb(tmp_path / "sub" / "u.png"), pixels)
  np.testing.assert_array_equal(images.read_rgb(tmp_path / "f.png"), pixels)
  assert sorted(os.listdir(tmp_path)) == ["f.png", "sub"]  # No temporary files left.


def test_write_png_is_atomic_on_failure(tmp_path, monkeypatch):
  target = tmp_path / "keep.png"
  images.write_png(target, _rgb(seed=1))
  before = target.read_bytes()

  def fail(*args):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError, match="disk full"):
    images.write_png(target, _rgb(seed=2))
  assert target.read_bytes() == before
  assert os.listdir(tmp_path) == ["keep.png"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_error_names_the_file_being_written(tmp_path, monkeypatch):
  """A failed write() names no file; the error must name the one the user will look for."""
  target = tmp_path / "keep.png"
  images.write_png(target, _rgb(seed=1))
  before = target.read_bytes()

  def full_disk(handle, mode):
    os.close(handle)
    return open("/dev/full", mode)  # pylint: disable=unspecified-encoding

  monkeypatch.setattr(os, "fdopen", full_disk)
  with pytest.raises(OSError) as raised:
    images.write_png(target, _rgb(seed=2))
  assert raised.value.errno == errno.ENOSPC
  assert raised.value.filename == str(target)
  assert target.read_bytes() == before
  assert os.listdir(tmp_path) == ["keep.png"]


def test_write_png_rejects_bad_arrays(tmp_path):
  with pytest.raises(ValueError, match="shape"):
    images.write_png(tmp_path / "x.png", np.zeros((2, 2, 2), np.uint8))
  with pytest.raises(ValueError, match="dtype"):
    images.write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.int64))
  assert not (tmp_path / "x.png").exists()


def test_list_images_sorted_and_filtered(tmp_path):
  for name in ("b.PNG", "a.jpg", "c.bmp", "notes.txt", ".hidden.png", ".x.png.123.tmp"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "dir.png").mkdir()
  assert [p.name for p in images.list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.bmp"]
  with pytest.raises(FileNotFoundError, match="missing"):
    images.list_images(tmp_path / "missing")


def test_decode_rgb_views_ppm_and_decodes_jpeg(tmp_path):
  pixels = _rgb(6, 9)
  view = images.decode_rgb(images.encode_ppm(pixels))
  np.testing.assert_array_equal(view, pixels)
  assert not view.flags.writeable  # A view of the bytes, not a copy.
  Image.fromarray(pixels).save(tmp_path / "a.jpg")
  np.testing.assert_array_equal(
      images.decode_rgb((tmp_path / "a.jpg").read_bytes()), images.read_rgb(tmp_path / "a.jpg")
  )
  with pytest.raises(ValueError, match="RGB"):
    images.encode_ppm(pixels[..., 0])


# ----------------------------------------------------------------------------
# Read_picture / encode_picture.


@pytest.mark.parametrize("orientation", range(1, 9))
def test_picture_is_upright_as_exif_transpose_makes_it(tmp_path, orientation):
  rgba = np.concatenate([_rgb(4, 6), _rgb(4, 6, seed=1)[..., :1]], axis=-1)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(rgba, mode="RGBA").save(tmp_path / "o.png", exif=exif)
  with Image.open(tmp_path / "o.png") as image:
    want = np.asarray(ImageOps.exif_transpose(image))
  picture = images.read_picture(tmp_path / "o.png")
  np.testing.assert_array_equal(np.rint(picture.rgb * 255).astype(np.uint8), want[..., :3])
  np.testing.assert_array_equal(picture.alpha, want[..., 3])


@pytest.mark.parametrize(
    "make, grey, alpha, bits",
    [
        (lambda: Image.fromarray(_rgb()), False, False, 8),
        (lambda: Image.new("CMYK", (7, 5), (0, 255, 255, 0)), False, False, 8),
        (lambda: Image.fromarray(_rgb()).convert("P"), False, False, 8),
        (lambda: Image.fromarray(_rgb()).convert("YCbCr"), False, False, 8),
        (lambda: Image.fromarray(_rgb()).convert("1"), True, False, 8),
        (lambda: Image.fromarray(_rgb()).convert("LA"), True, True, 8),
        (lambda: Image.fromarray((_rgb()[..., 0].astype(np.uint16) * 257)), True, False, 16),
    ],
)
def test_picture_kinds(tmp_path, make, grey, alpha, bits):
  path = tmp_path / "k.tif"  # TIFF holds every one of these modes
  make().save(path)
  picture = images.read_picture(path)
  assert picture.rgb.shape == (5, 7, 3) and picture.rgb.dtype == np.float32
  assert 0 <= picture.rgb.min() and picture.rgb.max() <= 1
  assert (picture.grey, picture.alpha is not None, picture.bits) == (grey, alpha, bits)
  assert picture.format == "TIFF"
  if grey:
    np.testing.assert_array_equal(picture.rgb[..., 0], picture.rgb[..., 2])
  out = Image.open(io.BytesIO(images.encode_picture(picture.rgb, picture, "PNG")))
  want = (
      "I;16"
      if bits == 16
      else {(False, False): "RGB", (True, False): "L", (True, True): "LA"}[grey, alpha]
  )
  assert out.mode == want


def test_sixteen_bit_png_is_read_whole(tmp_path):
  wide = np.array([[[0, 1, 2], [255, 256, 65535]]], dtype=np.uint16)
  with open(tmp_path / "w.png", "wb") as f:
    png.Writer(2, 1, greyscale=False, bitdepth=16).write(f, wide.reshape(1, -1))
  picture = images.read_picture(tmp_path / "w.png")
  assert picture.bits == 16 and not picture.grey and picture.alpha is None
  np.testing.assert_array_equal(np.rint(picture.rgb * 65535).astype(np.uint16), wide)


@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("lossless", [False, True])
def test_webp_lossless_is_told_apart(tmp_path, alpha, lossless):
  pixels = _rgb(8, 8) if not alpha else np.concatenate([_rgb(8, 8), _rgb(8, 8)[..., :1]], -1)
  Image.fromarray(pixels).save(tmp_path / "w.webp", lossless=lossless)
  picture = images.read_picture(tmp_path / "w.webp")
  assert picture.format == "WEBP" and picture.lossless == lossless
  assert (picture.alpha is not None) == alpha


def test_output_format_and_unfit():
  assert [images.output_format(f) for f in ("JPEG", "WEBP", "PNG", "TIFF", "BMP")] == [
      "JPEG",
      "WEBP",
      "PNG",
      "PNG",
      "PNG",
  ]
  assert images.output_format("JPEG", "png") == "PNG"
  assert images.output_format("PNG", "jpg") == "JPEG"
  with pytest.raises(ValueError, match="unknown"):
    images.output_format("PNG", "gif")
  rgb = np.zeros((2, 2, 3), np.float32)
  deep = images.Picture(rgb, None, False, 16, "PNG")
  clear = images.Picture(rgb, np.zeros((2, 2), np.uint8), False, 8, "PNG")
  assert images.unfit(deep, "JPEG") == "16 bits per channel"
  assert images.unfit(clear, "JPEG") == "an alpha channel" and images.unfit(clear, "PNG") == ""
  with pytest.raises(ValueError, match="JPEG cannot hold an alpha channel"):
    images.encode_picture(rgb, clear, "JPEG")
  with pytest.raises(ValueError, match="shape"):
    images.encode_picture(rgb[:1], clear, "PNG")


def test_phone_jpeg_with_several_pictures_counts_as_jpeg(tmp_path):
  Image.fromarray(_rgb(8, 8)).save(
      tmp_path / "m.jpg", format="MPO", save_all=True, append_images=[Image.fromarray(_rgb(4, 4))]
  )
  with Image.open(tmp_path / "m.jpg") as image:
    assert image.format == "MPO"
  picture = images.read_picture(tmp_path / "m.jpg")
  assert picture.format == "JPEG" and images.output_format(picture.format) == "JPEG"
  assert picture.rgb.shape == (8, 8, 3) and picture.subsampling == 2

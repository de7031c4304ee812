"""Tests of mirl_jax.images: every common file layout becomes RGB uint8, bad files fail clearly."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from mirl_jax import images


def _rgb(h=5, w=7, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize('ext', ['.png', '.bmp', '.tif', '.PNG'])
def test_lossless_rgb_files_read_exactly(tmp_path, ext):
  pixels = _rgb()
  path = tmp_path / f'a{ext}'
  Image.fromarray(pixels).save(path, format={'.png': 'PNG', '.bmp': 'BMP', '.tif': 'TIFF'}[ext.lower()])
  out = images.read_rgb(path)
  assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
  np.testing.assert_array_equal(out, pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path):
  gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
  Image.fromarray(gray, mode='L').save(tmp_path / 'g.png')
  out = images.read_rgb(tmp_path / 'g.png')
  assert out.shape == (5, 7, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
  rgba = np.concatenate([_rgb(), np.zeros((5, 7, 1), np.uint8)], axis=-1)  # Fully transparent.
  Image.fromarray(rgba, mode='RGBA').save(tmp_path / 'a.png')
  np.testing.assert_array_equal(images.read_rgb(tmp_path / 'a.png'), rgba[..., :3])


def test_palette_uses_palette_colours(tmp_path):
  image = Image.new('P', (4, 2))
  image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
  image.putdata([0, 1, 0, 1, 1, 1, 0, 0])
  image.save(tmp_path / 'p.png')
  out = images.read_rgb(tmp_path / 'p.png')
  np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
  np.testing.assert_array_equal(out[0, 1], [0, 255, 0])


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
  wide = np.array([[0, 1000, 25700, 65535]], dtype=np.uint16)
  Image.fromarray(wide).save(tmp_path / 'w.png')
  with Image.open(tmp_path / 'w.png') as check:
    assert check.mode.startswith('I')  # Really a 16-bit file.
  out = images.read_rgb(tmp_path / 'w.png')
  np.testing.assert_array_equal(out[0, :, 0], [0, 4, 100, 255])  # 1000 -> 3.9 -> 4, not 255.
  assert out.shape == (1, 4, 3)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
  Image.new('CMYK', (6, 4), (0, 255, 255, 0)).save(tmp_path / 'c.jpg')  # Pure red in CMYK.
  out = images.read_rgb(tmp_path / 'c.jpg')
  assert out.shape == (4, 6, 3)
  assert out[..., 0].min() > 200 and out[..., 1].max() < 60


def test_exif_orientation_is_applied(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  Image.fromarray(_rgb(4, 10)).save(tmp_path / 'r.jpg', exif=exif)
  assert images.read_rgb(tmp_path / 'r.jpg').shape == (10, 4, 3)
  data, size = images.read_encoded_rgb(tmp_path / 'r.jpg')
  assert size == (10, 4) and _decode(data).shape == (10, 4, 3)


def test_missing_file_error_names_it(tmp_path):
  with pytest.raises(ValueError, match='nope.png.*no such image file'):
    images.read_rgb(tmp_path / 'nope.png')


@pytest.mark.parametrize('fmt, ext', [('PNG', '.png'), ('JPEG', '.jpg')])
def test_truncated_file_error_names_it(tmp_path, fmt, ext):
  buffer = io.BytesIO()
  Image.fromarray(_rgb(64, 64)).save(buffer, format=fmt)
  path = tmp_path / f'cut{ext}'
  path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
  with pytest.raises(images.ImageReadError, match=f'cut{ext}.*expected a complete image'):
    images.read_rgb(path)


def test_non_image_error(tmp_path):
  (tmp_path / 'x.jpg').write_text('not an image')
  with pytest.raises(images.ImageReadError, match='x.jpg'):
    images.read_encoded_rgb(tmp_path / 'x.jpg')


def test_encoded_bytes_decode_to_read_rgb(tmp_path):
  pixels = _rgb(9, 11)
  Image.fromarray(pixels).save(tmp_path / 'a.jpg', quality=90)
  Image.fromarray(pixels).save(tmp_path / 'b.png')
  Image.fromarray(pixels[..., 0], mode='L').save(tmp_path / 'c.jpg')
  Image.fromarray(pixels).save(tmp_path / 'd.bmp')
  for name in ('a.jpg', 'b.png', 'c.jpg', 'd.bmp'):
    data, size = images.read_encoded_rgb(tmp_path / name)
    decoded = _decode(data)
    assert decoded.shape == (9, 11, 3) and size == (9, 11), name
    np.testing.assert_array_equal(decoded, images.read_rgb(tmp_path / name))
  # A plain RGB JPEG is kept byte for byte; the others are converted.
  assert images.read_encoded_rgb(tmp_path / 'a.jpg')[0] == (tmp_path / 'a.jpg').read_bytes()
  assert images.read_encoded_rgb(tmp_path / 'b.png')[0].startswith(b'P6')


def test_write_png_round_trips_uint8_and_float(tmp_path):
  pixels = _rgb()
  images.write_png(tmp_path / 'sub' / 'u.png', pixels)
  images.write_png(tmp_path / 'f.png', pixels.astype(np.float32) / 255.0)
  np.testing.assert_array_equal(images.read_rgb(tmp_path / 'sub' / 'u.png'), pixels)
  np.testing.assert_array_equal(images.read_rgb(tmp_path / 'f.png'), pixels)
  assert sorted(os.listdir(tmp_path)) == ['f.png', 'sub']  # No temporary files left.


def test_write_png_is_atomic_on_failure(tmp_path, monkeypatch):
  target = tmp_path / 'keep.png'
  images.write_png(target, _rgb(seed=1))
  before = target.read_bytes()

  def fail(*args):
    raise OSError('disk full')
  monkeypatch.setattr(os, 'replace', fail)
  with pytest.raises(OSError, match='disk full'):
    images.write_png(target, _rgb(seed=2))
  assert target.read_bytes() == before
  assert os.listdir(tmp_path) == ['keep.png']


def test_write_png_rejects_bad_arrays(tmp_path):
  with pytest.raises(ValueError, match='shape'):
    images.write_png(tmp_path / 'x.png', np.zeros((2, 2, 2), np.uint8))
  with pytest.raises(ValueError, match='dtype'):
    images.write_png(tmp_path / 'x.png', np.zeros((2, 2, 3), np.int64))
  assert not (tmp_path / 'x.png').exists()


def test_list_images_sorted_and_filtered(tmp_path):
  for name in ('b.PNG', 'a.jpg', 'c.bmp', 'notes.txt', '.hidden.png', '.x.png.123.tmp'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'dir.png').mkdir()
  assert [p.name for p in images.list_images(tmp_path)] == ['a.jpg', 'b.PNG', 'c.bmp']
  with pytest.raises(FileNotFoundError, match='missing'):
    images.list_images(tmp_path / 'missing')


def test_decode_rgb_views_ppm_and_decodes_jpeg(tmp_path):
  pixels = _rgb(6, 9)
  view = images.decode_rgb(images.encode_ppm(pixels))
  np.testing.assert_array_equal(view, pixels)
  assert not view.flags.writeable  # A view of the bytes, not a copy.
  Image.fromarray(pixels).save(tmp_path / 'a.jpg')
  np.testing.assert_array_equal(images.decode_rgb((tmp_path / 'a.jpg').read_bytes()),
                                images.read_rgb(tmp_path / 'a.jpg'))
  with pytest.raises(ValueError, match='RGB'):
    images.encode_ppm(pixels[..., 0])

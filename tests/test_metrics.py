"""mirl_jax.metrics against scikit-image (float64) on real photos with realistic degradations."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mirl_jax import metrics

PSNR_TOL = 1e-4  # dB
SSIM_TOL = 1e-5


def photo(name, size=None):
  """A photo shipped inside scikit-image (no download), float32 in [0, 1], optionally cropped."""
  image = getattr(data, name)()
  if size is not None:
    h, w = size
    assert image.shape[0] >= h and image.shape[1] >= w
    image = image[:h, -w:]
  return image.astype(np.float32) / 255.0


def jpeg(image, quality):
  buffer = io.BytesIO()
  Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
  return np.asarray(Image.open(buffer).convert("RGB"), np.float32) / 255.0


def degradations(clean, seed=0):
  """Like the test sets: noise 15/25/50 (on 0..255, clipped, uint8), blur, JPEG, 3-bit."""
  rng = np.random.default_rng(seed)
  out = []
  for sigma in (15, 25, 50):
    noisy = np.clip(clean * 255 + rng.standard_normal(clean.shape) * sigma, 0, 255)
    out.append(noisy.astype(np.uint8).astype(np.float32) / 255.0)
  out.append(ndimage.gaussian_filter(clean, sigma=(1.5, 1.5, 0)).astype(np.float32))
  out.append(jpeg(clean, quality=15))
  out.append((np.round(clean * 7) / 7).astype(np.float32))
  # A close restoration: the regime where float32 cancellation would show.
  out.append(np.clip(clean + rng.standard_normal(clean.shape) * 0.002, 0, 1).astype(np.float32))
  return np.stack(out)


def skimage_metrics(clean, degraded):
  clean, degraded = clean.astype(np.float64), degraded.astype(np.float64)
  return (
      peak_signal_noise_ratio(clean, degraded, data_range=1),
      structural_similarity(clean, degraded, data_range=1, channel_axis=-1),
  )


@pytest.mark.parametrize(
    "name,size",
    [
        ("astronaut", None),  # 512 x 512
        ("coffee", None),  # 400 x 600
        ("chelsea", None),  # 300 x 451: odd, not a multiple of 7
        ("astronaut", (97, 130)),  # small, non-square, not multiples of 7
        ("coffee", (7, 40)),  # a single window row
    ],
)
def test_matches_skimage_on_degraded_photos(name, size):
  clean = photo(name, size)
  batch = degradations(clean)
  psnr, ssim = (
      np.asarray(v) for v in metrics.psnr_ssim(np.broadcast_to(clean, batch.shape), batch)
  )
  assert psnr.shape == ssim.shape == (len(batch),)
  for index, degraded in enumerate(batch):
    want_psnr, want_ssim = skimage_metrics(clean, degraded)
    assert abs(psnr[index] - want_psnr) < PSNR_TOL, (index, psnr[index], want_psnr)
    assert abs(ssim[index] - want_ssim) < SSIM_TOL, (index, ssim[index], want_ssim)
  # The degradations span the useful range, so the comparison is not all near one point.
  assert psnr.min() < 16 and psnr.max() > 45 and ssim.min() < 0.5 and ssim.max() > 0.95


def test_flat_regions_do_not_cancel():
  """Bright, nearly flat: float32 E[x^2] - E[x]^2 would err ~5e-8, 5e-5 of C2 = 9e-4."""
  rng = np.random.default_rng(1)
  sky = np.clip(
      0.9 + 0.05 * np.linspace(0, 1, 120)[:, None, None] + rng.standard_normal((120, 90, 3)) * 0.01,
      0,
      1,
  ).astype(np.float32)
  restored = np.clip(sky + rng.standard_normal(sky.shape) * 0.01, 0, 1).astype(np.float32)
  want_psnr, want_ssim = skimage_metrics(sky, restored)
  assert 0.3 < want_ssim < 0.95  # Variances ~1e-4, comparable to C2: the structure term counts.
  assert abs(float(metrics.ssim(sky, restored)) - want_ssim) < SSIM_TOL
  assert abs(float(metrics.psnr(sky, restored)) - want_psnr) < PSNR_TOL


def test_unbatched_symmetric_and_batched_agree():
  clean = photo("chelsea", (64, 96))
  noisy = degradations(clean)[1]
  single = float(metrics.ssim(clean, noisy))
  assert np.asarray(metrics.ssim(clean, noisy)).shape == ()
  assert single == pytest.approx(float(metrics.ssim(noisy, clean)), abs=1e-7)
  assert single == pytest.approx(
      float(metrics.ssim(clean[None, None], noisy[None, None])[0, 0]), abs=1e-7
  )
  assert float(metrics.psnr(clean, noisy)) == pytest.approx(float(metrics.psnr(noisy, clean)))


def test_identical_images_give_infinite_psnr_and_unit_ssim():
  """Documented: PSNR of identical images is +inf (as skimage's), SSIM exactly 1."""
  clean = photo("astronaut", (48, 40))
  psnr, ssim = metrics.psnr_ssim(clean, clean)
  assert np.isposinf(float(psnr))
  assert float(ssim) == pytest.approx(1.0, abs=1e-7)
  with np.errstate(divide="ignore"):
    assert np.isposinf(peak_signal_noise_ratio(clean, clean, data_range=1))


def test_bad_inputs_name_the_shapes():
  image = np.zeros((16, 16, 3), np.float32)
  with pytest.raises(ValueError, match=r"\(16, 16, 3\) vs \(16, 8, 3\)"):
    metrics.psnr(image, image[:, :8])
  with pytest.raises(ValueError, match="at least 7"):
    metrics.ssim(image[:6], image[:6])
  with pytest.raises(ValueError, match="odd"):
    metrics.ssim(image, image, win_size=4)
  with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
    metrics.psnr(image[0], image[0])

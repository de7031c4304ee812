"""The browser restorer end to end: headless Chromium through web/ as mirl_jax.serve serves it.

A tiny pruned ticket goes out as a web bundle (mirl_jax.web_export), the page rebuilds its
weights, restores a noisy photo larger than one tile in both sides in onnxruntime-web's wasm, and
the PNG it offers must match `restore.restore_array` in JAX, 8-bit conversion included.

Driven with Playwright for Python rather than Selenium: it waits on page state without polling
loops, feeds the hidden file input and catches the download in memory with no download folder
or chromedriver to configure, and reports the page's console errors. It drives the system
Chromium (/usr/bin/chromium, Debian's `chromium`): never run `playwright install`.

    python -m pytest -m slow tests/test_web_page.py
"""

import importlib.util
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, serving
from mirl_jax import demo_data, images, lottery, masks, models, restore, serve

pytestmark = pytest.mark.slow

CHROMIUM = Path(serve.CHROMIUM)
TILE, OVERLAP = 128, 32
SIZE = (168, 200)  # (H, W): two tiles down and two across, each side padded differently
TIMEOUT_MS = 180_000


def _skip(reason: str):
  print(f"test_web_page skipped: {reason}")
  pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
  if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
    _skip(
        f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium chromium-driver`"
    )
  try:
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  except ImportError:
    _skip("Playwright for Python is missing: `pip install playwright` (not `playwright install`)")
  try:
    serve.check_runtime()
  except FileNotFoundError as error:
    _skip(str(error))
  with sync_playwright() as playwright:
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=list(serve.CHROMIUM_ARGS)
    )
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def ticket():
  """The tiny network's init with half its prunable weights pruned: a real mask to ship."""
  params = models.init_params(TINY, jax.random.key(0))
  pruned = lottery.prune(params, masks.masks_from_params(params), 50.0)
  return jax.tree.map(np.asarray, masks.apply_masks(params, pruned))


@pytest.fixture(scope="module")
def bundle(browser, ticket, tmp_path_factory):
  del browser  # built only where the browser test can run
  for module in ("onnx", "jax2onnx"):
    if importlib.util.find_spec(module) is None:
      _skip(f"the web bundle's ONNX export needs {module}: pip install -e '.[export]'")
  from mirl_jax import web_export  # pylint: disable=import-outside-toplevel

  folder = tmp_path_factory.mktemp("bundle")
  web_export.write_bundle(TINY, ticket, folder, tile=TILE, overlap=OVERLAP, ticket=1)
  return folder


@pytest.fixture(scope="module")
def server(bundle):
  with serving(serve.make_server(bundle, port=0, quiet=True)) as srv:
    yield srv


@pytest.fixture
def page(browser, server):
  """The page with its model loaded; fails on any script error the page raises."""
  context = browser.new_context(accept_downloads=True)
  tab = context.new_page()
  errors = []
  tab.on("pageerror", lambda error: errors.append(str(error)))
  tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
  tab.goto(server.url)
  tab.wait_for_function(
      "document.body.dataset.model !== 'loading'", polling=100, timeout=TIMEOUT_MS
  )
  assert tab.get_attribute("body", "data-model") == "ready", tab.inner_text("#error")
  yield tab
  context.close()
  assert not errors, errors


def _finish(tab) -> str:
  """Waits for the page to finish with a file: 'done' or 'error'."""
  tab.wait_for_function(
      "['done', 'error'].includes(document.body.dataset.state)", polling=50, timeout=TIMEOUT_MS
  )
  return tab.get_attribute("body", "data-state")


def _noisy_photo(path: Path) -> Path:
  """A demo test photo cropped to SIZE, with Gaussian noise (sigma 25), as an 8-bit PNG."""
  photo = images.read_rgb(demo_data._bundled(demo_data.TEST_SOURCES[0]))  # chelsea.png
  h, w = SIZE
  top, left = (photo.shape[0] - h) // 2, (photo.shape[1] - w) // 2
  clean = photo[top : top + h, left : left + w].astype(np.float64)
  noise = np.random.default_rng(0).normal(0.0, 25.0, clean.shape)
  images.write_png(path, np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8))
  return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def test_the_page_restores_as_restore_array_does(page, ticket, server, tmp_path):
  source = _noisy_photo(tmp_path / "noisy.png")
  assert page.inner_text("#info-ticket") == "1"
  assert "instead of" in page.inner_text("#info-bytes")

  page.set_input_files("#file", str(source))
  assert _finish(page) == "done", page.inner_text("#error")
  assert page.inner_text("#progress-text") == "tile 4 of 4"
  assert page.evaluate("document.getElementById('after').naturalWidth") == SIZE[1]

  with page.expect_download() as download:
    page.click("#download")
  assert download.value.suggested_filename == "noisy_restored.png"
  download.value.save_as(tmp_path / "page.png")
  with Image.open(tmp_path / "page.png") as png:  # Chromium's encoder writes RGBA, all opaque
    assert (png.format, png.size) == ("PNG", SIZE[::-1]) and png.mode in ("RGB", "RGBA")
    assert png.mode == "RGB" or np.all(np.asarray(png)[..., 3] == 255)
  from_page = images.read_rgb(tmp_path / "page.png")

  picture = images.read_picture(source)
  restored = restore.restore_array(
      restore.make_forward(TINY, ticket), picture.rgb, tile=TILE, overlap=OVERLAP
  )
  from_jax = images.decode_rgb(images.encode_picture(restored, picture, "PNG"))
  psnr = _psnr(from_page, from_jax)
  differ = np.abs(from_page.astype(int) - from_jax.astype(int))
  changed = np.abs(from_jax.astype(int) - images.read_rgb(source).astype(int)).mean()
  print(
      f"page vs restore_array (JAX): PSNR {psnr:.2f} dB, {np.count_nonzero(differ)} of "
      f"{differ.size} values differ, by at most {differ.max()}; the restore moves values by "
      f"{changed:.1f} on average"
  )
  assert psnr >= 40.0
  assert changed > 1.0, "the ticket returns its input: the comparison would prove nothing"

  page.eval_on_selector("#slider", "s => { s.value = 25; s.dispatchEvent(new Event('input')); }")
  assert "25%" in page.get_attribute("#compare", "style")
  if os.environ.get("MIRL_WEB_SCREENSHOT"):
    page.screenshot(path=os.environ["MIRL_WEB_SCREENSHOT"], full_page=True)


def test_the_page_refuses_what_it_cannot_restore(page, tmp_path):
  text = tmp_path / "notes.png"
  text.write_text("not a picture, whatever the name says\n")
  page.set_input_files("#file", str(text))
  assert _finish(page) == "error"
  assert "not an image" in page.inner_text("#error") and "notes.png" in page.inner_text("#error")

  page.evaluate("document.body.dataset.state = 'idle'")
  page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["plain text"], "dropped.txt", {type: "text/plain"}));
        const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true});
        document.getElementById("drop").dispatchEvent(drop);
      }""")  # the same refusal through the drop zone
  assert _finish(page) == "error"
  assert "not an image" in page.inner_text("#error") and "dropped.txt" in page.inner_text("#error")

  huge = tmp_path / "huge.png"
  Image.new("RGB", (5000, 4000), (40, 90, 160)).save(huge)  # 20 megapixels, a few kB
  page.evaluate("document.body.dataset.state = 'idle'")
  page.set_input_files("#file", str(huge))
  assert _finish(page) == "error"
  message = page.inner_text("#error")
  assert "5000 × 4000" in message and "20.0 megapixels" in message and "16 megapixels" in message
  assert page.is_hidden("#result")

"""A screenshot of the page restoring a noisy demo photo, for the README.

Start the server first (`python -m mirl_jax.main --config configs/demo.py --workdir runs/demo
--mode serve`), then:

    python web/screenshot.py --url http://127.0.0.1:8000/ --out web/screenshot.png

Drives the system Chromium (/usr/bin/chromium) with Playwright, as tests/test_web_page.py does.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirl_jax import demo_data  # pylint: disable=wrong-import-position
from mirl_jax import images  # pylint: disable=wrong-import-position
from mirl_jax import serve  # pylint: disable=wrong-import-position


def noisy_demo_photo(path: Path, sigma: float, seed: int = 0) -> Path:
  """The first demo test photo with Gaussian noise of `sigma` (8-bit levels), as a PNG."""
  clean = images.read_rgb(demo_data._bundled(demo_data.TEST_SOURCES[0]))  # pylint: disable=protected-access
  noise = np.random.default_rng(seed).normal(0.0, sigma, clean.shape)
  images.write_png(path, np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8))
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--url", default="http://127.0.0.1:8000/")
  parser.add_argument("--out", type=Path, default=Path("web/screenshot.png"))
  parser.add_argument("--sigma", type=float, default=25.0)
  parser.add_argument("--slider", type=int, default=50, help="the before/after split, percent")
  args = parser.parse_args()
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
    browser = playwright.chromium.launch(
        executable_path=serve.CHROMIUM, args=list(serve.CHROMIUM_ARGS)
    )
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(args.url)
    page.wait_for_function("document.body.dataset.model !== 'loading'", timeout=300_000)
    page.set_input_files("#file", str(noisy_demo_photo(Path(tmp) / "noisy_cat.png", args.sigma)))
    page.wait_for_function(
        "['done', 'error'].includes(document.body.dataset.state)", timeout=600_000
    )
    page.eval_on_selector(
        "#slider", f"s => {{ s.value = {args.slider}; s.dispatchEvent(new Event('input')); }}"
    )
    page.screenshot(path=str(args.out), full_page=True)
    print(f"{page.get_attribute('body', 'data-state')}: wrote {args.out}")
    browser.close()


if __name__ == "__main__":
  main()

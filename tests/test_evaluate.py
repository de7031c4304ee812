"""mirl_jax.evaluate on the demo data: identity and tiny-PromptIR forwards, reports, PNGs."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import TINY
from conftest import eval_result
from mirl_jax import demo_data, evaluate, images, models, pipeline

SIGMAS = [15, 50]
DEGRADATIONS = {"denoise_15", "denoise_50", "derain", "dehaze"}


@pytest.fixture(scope="session")
def data_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo_eval")
  demo_data.build_demo(root / "manual", root / "data")
  return ml_collections.ConfigDict(
      dict(
          data_dir=str(root / "data"),
          train_sets=list(demo_data.DEMO_TRAIN_SETS),
          test_sets=list(demo_data.DEMO_TEST_SETS),
          batch_size=4,
          patch_size=64,
          sigmas=SIGMAS,
          repeats={"denoise": 3, "derain": 120, "dehaze": 1},
          worker_count=0,
          read_threads=2,
      )
  )


@pytest.fixture(scope="session")
def identity_results(data_config):
  return evaluate.evaluate(lambda x: x, data_config, progress=False)


def check_results(results, data_config):
  assert [(r["degradation"], r["dataset"]) for r in results] == [
      (s.degradation, s.dataset) for s in pipeline.eval_sets(data_config)
  ]
  assert {r["degradation"] for r in results} == DEGRADATIONS
  for result in results:
    assert set(result) == set(evaluate.RESULT_KEYS)
    assert (
        result["images"]
        == pipeline.eval_size(data_config, pipeline.eval_sets(data_config)[results.index(result)])
        > 0
    )
    for key in ("psnr", "ssim", "input_psnr", "input_ssim"):
      assert np.isfinite(result[key]), (result, key)
    assert 5 < result["input_psnr"] < 40 and 0 < result["input_ssim"] < 1


def test_identity_scores_equal_the_input_and_skimage(identity_results, data_config):
  check_results(identity_results, data_config)
  for result in identity_results:
    assert result["psnr"] == result["input_psnr"] and result["ssim"] == result["input_ssim"]
  # Independently: skimage on the same pipeline images, averaged.
  for eval_set, result in zip(pipeline.eval_sets(data_config), identity_results):
    scores = [
        (
            peak_signal_noise_ratio(
                e["clean"][0].astype(np.float64), e["degraded"][0].astype(np.float64), data_range=1
            ),
            structural_similarity(
                e["clean"][0].astype(np.float64),
                e["degraded"][0].astype(np.float64),
                data_range=1,
                channel_axis=-1,
            ),
        )
        for e in pipeline.eval_dataset(data_config, eval_set)
    ]
    want_psnr, want_ssim = np.mean(scores, axis=0)
    assert result["psnr"] == pytest.approx(want_psnr, abs=1e-4)
    assert result["ssim"] == pytest.approx(want_ssim, abs=1e-5)
  by_name = {r["degradation"]: r for r in identity_results}
  assert by_name["denoise_15"]["psnr"] > by_name["denoise_50"]["psnr"] + 5  # more noise, lower


def test_output_is_clipped_before_scoring(data_config):
  """Pushing values out of [0, 1] must score exactly as the clipped image (the reference clips)."""
  config = ml_collections.ConfigDict(data_config.to_dict())
  config.test_sets = ["derain/DemoRain"]
  clipped = evaluate.evaluate(lambda x: np.clip(x * 3 - 1, 0, 1), config, progress=False)
  raw = evaluate.evaluate(lambda x: x * 3 - 1, config, progress=False)
  assert raw == clipped
  assert raw[0]["psnr"] < raw[0]["input_psnr"]


def test_tiny_promptir_results_reports_and_pngs(data_config, tmp_path):
  model = TINY
  params = models.init_params(model, jax.random.key(0))
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  results = evaluate.evaluate(apply, data_config, output_dir=tmp_path / "png", progress=True)
  check_results(results, data_config)

  saved = sorted(p.relative_to(tmp_path / "png") for p in (tmp_path / "png").rglob("*.png"))
  assert len(saved) == sum(r["images"] for r in results)
  assert {p.parts[0] for p in saved} == DEGRADATIONS
  first_set = pipeline.eval_sets(data_config)[0]
  example = next(iter(pipeline.eval_dataset(data_config, first_set)))
  png = images.read_rgb(
      tmp_path / "png" / first_set.degradation / first_set.dataset / f'{example["name"]}.png'
  )
  want = np.clip(np.asarray(apply(example["degraded"]))[0], 0, 1)
  assert png.shape == want.shape
  assert np.abs(png.astype(np.float32) / 255 - want).max() <= 0.5 / 255 + 1e-6  # rounded

  md, js = evaluate.write_reports(results, tmp_path / "reports", stem="tiny")
  report = json.loads(js.read_text())
  assert report["results"] == results
  assert report["average"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in results]))
  table = md.read_text()
  assert table == f"# Evaluation: tiny\n\n{evaluate.format_table(results)}\n"
  assert not list((tmp_path / "reports").glob(".*.tmp"))


def test_format_table_rounds_like_the_paper():
  results = [
      eval_result("denoise_25", "BSD68", 68, 31.3149, 0.88816, 20.17, 0.4),
      eval_result("derain", "Rain100L", 100, 36.371, 0.97249, 26.9, 0.84),
  ]
  lines = evaluate.format_table(results).splitlines()
  assert len(lines) == 2 + 2 + 1  # header, rule, rows, average
  cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
  assert cells[0][:5] == ["Degradation", "Dataset", "Images", "PSNR", "SSIM"]
  assert cells[2] == ["denoise_25", "BSD68", "68", "31.31", "0.8882", "20.17", "0.4000"]
  assert cells[3][3:5] == ["36.37", "0.9725"]
  assert cells[4][:5] == ["average", "", "168", "33.84", "0.9303"]
  assert len({len(line) for line in lines}) == 1  # aligned

"""benchmarks/gpu.py: --smoke runs where only the GPU machine's packages are installed,
and a run killed halfway keeps the rows it finished.

The GPU machine has jax, flax, optax, orbax, numpy, torch and einops, and no more:
a sitecustomize on PYTHONPATH hides grain, tensorflow(_datasets), tensorboard and
ml_collections from every import, in the script and in every child it starts.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_reference  # pylint: disable=wrong-import-position
import gpu  # pylint: disable=wrong-import-position

BLOCKED = ("grain", "tensorflow_datasets", "tensorboard", "tensorflow", "ml_collections")
SITECUSTOMIZE = f'''
import sys

class _Hiding:
  """A finder that sees nothing of the blocked packages: they look not installed.

  Returning None rather than raising keeps importlib.util.find_spec(name) None,
  as torch probes for tensorflow that way.
  """

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in {BLOCKED!r}:
      return None
    return self._finder.find_spec(name, path, target)

  def __getattr__(self, attr):
    return getattr(self._finder, attr)

sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
'''
ROWS = (
    "forward 1x3x32x32, fp32",
    "forward 1x3x32x32, bf16",
    "train step 2x3x32x32, fp32",
    "train step 2x3x32x32, bf16",
)


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_a_run_killed_halfway_keeps_the_rows_it_finished(tmp_path, monkeypatch):
  out = tmp_path / "gpu.json"
  probe = {"python": "3", "jax": "0", "jax_platform": "gpu", "jax_device": "GPU", "cpu": "x"}
  monkeypatch.setattr(gpu, "preflight", lambda args: (probe, {}))
  calls = []

  def child(spec, timeout, env):
    calls.append(spec["impl"])
    if len(calls) == 4:  # the machine's time runs out during the second row's ours
      raise KeyboardInterrupt
    figures = {"median_s": 0.1 * len(calls), "times_s": [0.1], "peak_bytes": 2**20}
    return dict(figures, compile_s=1.0) if spec["impl"] == "jax" else figures

  monkeypatch.setattr(gpu, "_run_child", child)
  monkeypatch.setattr(sys, "argv", ["gpu.py", "--out", str(out)])
  with pytest.raises(KeyboardInterrupt):
    gpu.main()

  results = json.loads(out.read_text())
  first, second = results["items"][:2]
  assert first["reference"]["median_s"] == pytest.approx(0.1)
  assert first["ours"]["median_s"] == pytest.approx(0.2)
  assert second["reference"]["median_s"] == pytest.approx(0.3) and "ours" not in second
  assert "| forward 1x3x256x256, fp32 | 200 ms | 1.00 s | 1 MiB | 100 ms |" in results["markdown"]
  assert "**not run**" in results["markdown"]
  assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow  # a whole run of the script, eight children: about a minute
def test_smoke_runs_with_only_the_gpu_machines_packages(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
  blocked = subprocess.run(
      [sys.executable, "-c", "import grain"],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert "No module named 'grain'" in blocked.stderr, "the import blocker is not in effect"

  missing = bench_reference.available()
  out = tmp_path / "gpu.json"
  cmd = [sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(out)]
  start = time.perf_counter()
  run = subprocess.run(
      cmd + (["--no-reference"] if missing else []),
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=False,
      timeout=600,
  )
  wall_s = time.perf_counter() - start
  assert run.returncode == 0, f"exit code {run.returncode}\n{run.stdout}\n{run.stderr[-4000:]}"

  table = [l for l in run.stdout.splitlines() if l.startswith("| ")]
  assert table[0].startswith("| setting | ours (JAX), median | compile |")
  assert [l.split(" | ")[0][2:] for l in table[1:]] == list(ROWS)
  results = json.loads(out.read_text())
  assert [item["setting"] for item in results["items"]] == list(ROWS)
  assert results["smoke"] and results["markdown"] in run.stdout
  for item in results["items"]:
    ours = item["ours"]
    assert "error" not in ours, ours
    assert _positive(ours["median_s"]) and _positive(ours["compile_s"]), ours
  train = [i["ours"]["loss"] for i in results["items"] if i["kind"] == "train"]
  assert all(_positive(loss) for loss in train), train
  print(f"smoke run: {wall_s:.0f} s")

  if missing:
    pytest.skip(f"reference not timed: {missing}")
  for item in results["items"]:
    ref = item["reference"]
    assert "error" not in ref, ref
    assert _positive(ref["median_s"]), ref
    assert all(_positive(t) for t in ref["times_s"]), ref
    assert f"{item['ours']['median_s'] / ref['median_s']:.2f}x time" in run.stdout
  # Our fp32 forward on the reference's weights, converted without grain or TFDS.
  check = results["check"]
  assert check is not None and check["max_abs_diff"] < 1e-3, check

"""A ticket's forward as StableHLO and ONNX: the same outputs outside our code."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REFERENCE, TINY, TINY_MODEL_KWARGS
from configs import all_in_one
from mirl_jax import checkpointing
from mirl_jax import config_keys
from mirl_jax import convert
from mirl_jax import export
from mirl_jax import forward_export
from mirl_jax import lottery
from mirl_jax import masks as masks_lib
from mirl_jax import models
from mirl_jax import restore

# Runs an exported artifact with jax and numpy only: what a user without mirl_jax has.
_RUN_STABLEHLO = """
import json, sys
import numpy as np
from jax import export
exported = export.deserialize(open(sys.argv[1], "rb").read())
inputs = np.load(sys.argv[2])
np.savez(sys.argv[3], **{k: np.asarray(exported.call(inputs[k])) for k in inputs.files})
print(json.dumps(sorted(m for m in sys.modules if m.startswith("mirl_jax"))))
"""


def _run_stablehlo(path, inputs: dict, tmp_path) -> dict:
  np.savez(tmp_path / "inputs.npz", **inputs)
  out = subprocess.run(
      [
          sys.executable,
          "-I",
          "-c",
          _RUN_STABLEHLO,
          path,
          tmp_path / "inputs.npz",
          tmp_path / "o.npz",
      ],
      capture_output=True,
      text=True,
      check=True,
      cwd=tmp_path,
  )
  assert json.loads(out.stdout.splitlines()[-1]) == []  # no mirl_jax module was imported
  with np.load(tmp_path / "o.npz") as data:
    return {k: data[k] for k in data.files}


def _pruned_tiny(percent=60.0, seed=3):
  params = models.init_params(TINY, jax.random.key(seed))
  ticket_masks = lottery.prune(params, masks_lib.dense_masks(params), percent)
  return jax.tree.map(np.asarray, masks_lib.apply_masks(params, ticket_masks)), ticket_masks


def test_stablehlo_runs_without_our_code_at_any_multiple_of_8(tmp_path):
  params, ticket_masks = _pruned_tiny()
  path = tmp_path / "ticket.stablehlo"
  path.write_bytes(forward_export.stablehlo(TINY, params, ticket_masks))
  rng = np.random.default_rng(0)
  inputs = {
      "one": rng.random((1, 32, 48, 3), np.float32),
      "two": rng.random((2, 24, 16, 3), np.float32),
  }
  outputs = _run_stablehlo(str(path), inputs, tmp_path)
  forward = restore.make_forward(TINY, params)
  for name, x in inputs.items():
    np.testing.assert_allclose(outputs[name], np.asarray(forward(x)), rtol=0, atol=1e-6)
  exported = jax.export.deserialize(path.read_bytes())
  assert exported.platforms == forward_export.STABLEHLO_PLATFORMS
  assert str(exported.in_avals[0].shape) == "(b, 8*h, 8*w, 3)"


def _onnx_run(proto, x):
  ort = pytest.importorskip("onnxruntime")
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(proto.SerializeToString(), options)
  return session.run(None, {session.get_inputs()[0].name: x})[0]


def _export(workdir, output, **options):
  config = all_in_one.get_config()
  config.model.update(TINY_MODEL_KWARGS)
  config.export.update(dict(output=str(output), **options))
  config_keys.validate(config, "export")
  return export.export_ticket(config, str(workdir))


def test_export_mode_writes_both_graph_formats_of_the_latest_ticket(tmp_path):
  """Both equal our forward: the StableHLO within 1e-6, the ONNX model in onnxruntime within
  1e-4."""
  pytest.importorskip("jax2onnx")
  params, ticket_masks = _pruned_tiny()
  workdir = str(tmp_path / "w")
  checkpointing.save_ticket(
      workdir, 0, models.init_params(TINY, jax.random.key(0)), ticket_masks, {}
  )
  checkpointing.save_ticket(workdir, 1, params, ticket_masks, {})
  x = np.random.default_rng(2).random((1, 16, 16, 3), np.float32)
  want = np.asarray(restore.make_forward(TINY, params)(x))
  assert _export(workdir, tmp_path / "t.stablehlo", format="stablehlo") == 1
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / "t.stablehlo").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
  got = jax.export.deserialize((tmp_path / "t.stablehlo").read_bytes()).call(x)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  assert _export(workdir, tmp_path / "t.onnx", format="onnx", tile=16) == 1
  onnx = pytest.importorskip("onnx")
  np.testing.assert_allclose(_onnx_run(onnx.load(tmp_path / "t.onnx"), x), want, atol=1e-4)
  with pytest.raises(ValueError, match=r"expected a name ending in \.onnx"):
    _export(workdir, tmp_path / "t.bin", format="onnx")
  with pytest.raises(ValueError, match="export.lightning.*False with export.format='onnx'"):
    _export(workdir, tmp_path / "t2.onnx", format="onnx", lightning=True)
  with pytest.raises(ValueError, match="export.tile=36: expected a multiple of 8"):
    forward_export.onnx_model(TINY, params, 36)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A workdir holding the reference fixture's ticket (the default network), imported."""
  workdir = tmp_path_factory.mktemp("imported")
  convert.import_checkpoint(str(REFERENCE), str(workdir), models.PromptIR())
  return workdir


@pytest.mark.slow
def test_the_reference_ticket_as_stablehlo_and_onnx_gives_the_reference_outputs(
    imported, reference, tmp_path
):
  """The default network with the reference's 11.7% ticket: both exports reproduce the
  PyTorch reference's outputs at both fixture sizes (StableHLO) and one (ONNX's fixed tile)."""
  _export_default = lambda output, **kw: export.export_ticket(
      _default_config(output, **kw), str(imported)
  )
  _export_default(tmp_path / "ref.stablehlo", format="stablehlo")
  inputs = {k: reference[k].transpose(0, 2, 3, 1) for k in ("input_0", "input_1")}
  outputs = _run_stablehlo(str(tmp_path / "ref.stablehlo"), inputs, tmp_path)
  for i in (0, 1):
    want = reference[f"output_{i}"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(outputs[f"input_{i}"], want, rtol=0, atol=2e-5)
  if not _has("jax2onnx") or not _has("onnxruntime"):
    pytest.skip("the ONNX half needs pip install -e '.[export]'")
  params, ticket_masks, _ = checkpointing.restore_ticket(str(imported))
  proto = forward_export.onnx_model(models.PromptIR(), params, (64, 96), ticket_masks)
  got = _onnx_run(proto, inputs["input_0"])
  np.testing.assert_allclose(got, reference["output_0"].transpose(0, 2, 3, 1), atol=1e-4)


def _default_config(output, **options):
  config = all_in_one.get_config()
  config.export.update(dict(output=str(output), **options))
  config_keys.validate(config, "export")
  return config


def _has(module: str) -> bool:
  try:
    __import__(module)
    return True
  except ImportError:
    return False

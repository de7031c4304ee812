"""The web page's bundle: a ticket's ONNX graph with its weights as survivors and bits."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import TINY
from mirl_jax import checkpointing
from mirl_jax import lottery
from mirl_jax import masks as masks_lib
from mirl_jax import models
from mirl_jax import restore
from mirl_jax import web_export

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("jax2onnx", reason="the bundle needs pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime")


def test_encoding_is_exact_and_skips_the_mask_where_it_costs_more():
  rng = np.random.default_rng(0)
  words = rng.standard_normal(1001).astype("<f4")
  words[rng.random(1001) < 0.9] = 0.0
  words[3] = -0.0  # all bits 0 but the sign: kept, so decoding is bit-exact
  mask, values = web_export.encode(words)
  assert mask.nbytes == 126 and values.size == np.count_nonzero(words.view("<u4"))
  assert web_export.decode(mask, values, words.size).tobytes() == words.tobytes()
  dense = rng.standard_normal(1000).astype("<f4")
  dense[:3] = 0.0  # 3 zeros spare 12 bytes; a mask would cost 125
  mask, values = web_export.encode(dense)
  assert mask is None and values is dense


def _session(folder, tmp_path):
  """The session the page builds: graph plus weights.data rebuilt from the bundle."""
  graph, dense = web_export.load_dense(folder)
  (tmp_path / "rebuilt").mkdir()
  (tmp_path / "rebuilt" / web_export.GRAPH).write_bytes(graph)
  dense.tofile(tmp_path / "rebuilt" / web_export.DATA)
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(str(tmp_path / "rebuilt" / web_export.GRAPH), options)


def test_a_ticket_with_a_tenth_of_its_weights_ships_in_under_15_percent(tmp_path):
  params = models.init_params(TINY, jax.random.key(5))
  ticket_masks = lottery.prune(params, masks_lib.dense_masks(params), 90.0)
  folder = web_export.write_bundle(
      TINY, params, tmp_path / "bundle", tile=32, ticket=4, ticket_masks=ticket_masks
  )
  manifest = web_export.read_manifest(folder)
  assert sorted(os.listdir(folder)) == sorted(
      [web_export.GRAPH, web_export.MASK, web_export.VALUES, web_export.MANIFEST]
  )  # weights.data, the dense weights, is never written: the page rebuilds it
  assert manifest["ticket"] == 4 and manifest["input_shape"] == [1, 32, 32, 3]
  sparse = manifest["bytes"][web_export.MASK] + manifest["bytes"][web_export.VALUES]
  assert manifest["survivors"] <= 0.11 * manifest["floats"]
  assert sparse <= 0.15 * 4 * manifest["floats"]
  session = _session(folder, tmp_path)
  x = np.random.default_rng(1).random((1, 32, 32, 3), np.float32)
  got = session.run(None, {session.get_inputs()[0].name: x})[0]
  want = restore.make_forward(TINY, masks_lib.apply_masks(params, ticket_masks))(x)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-4)


def test_serve_exports_the_latest_ticket_once(tmp_path, capsys):
  params = models.init_params(TINY, jax.random.key(6))
  dense = masks_lib.dense_masks(params)
  workdir = str(tmp_path / "w")
  checkpointing.save_ticket(workdir, 0, params, dense, {})
  checkpointing.save_ticket(workdir, 1, params, lottery.prune(params, dense, 20.0), {})
  folder = web_export.ticket_bundle(workdir, TINY, None, 16)
  assert folder == tmp_path / "w" / "web" / "ticket_1_tile_16"
  manifest = json.loads((folder / web_export.MANIFEST).read_text())
  assert manifest["ticket"] == 1 and manifest["nonzero"] < manifest["params"]
  assert "of the dense ONNX model" in capsys.readouterr().out
  stamp = os.stat(folder / web_export.GRAPH).st_mtime_ns
  assert web_export.ticket_bundle(workdir, TINY, None, 16) == folder
  assert os.stat(folder / web_export.GRAPH).st_mtime_ns == stamp  # reused, not rewritten
  assert web_export.ticket_bundle(workdir, TINY, 0, 16).name == "ticket_0_tile_16"
  with pytest.raises(ValueError, match="No ticket 7 in"):
    web_export.ticket_bundle(workdir, TINY, 7, 16)


def test_serve_mode_exports_the_ticket_and_serves_the_page_on_127_0_0_1(tmp_path):
  """`--mode serve` end to end, short of a browser: the command prints its URL, and the page,
  runtime and bundle come from it."""
  from mirl_jax import serve  # pylint: disable=import-outside-toplevel

  try:
    serve.check_runtime()
  except FileNotFoundError as error:
    pytest.skip(str(error))
  workdir = str(tmp_path / "w")
  params = models.init_params(TINY, jax.random.key(8))
  checkpointing.save_ticket(workdir, 0, params, masks_lib.dense_masks(params), {})
  command = [
      sys.executable,
      "-u",
      "-m",
      "mirl_jax.main",
      f"--config={ROOT / 'tests' / 'tiny_config.py'}",
      f"--workdir={workdir}",
      "--mode=serve",
      "--config.serve.port=0",
      "--config.serve.tile=32",
  ]
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
    try:
      lines = []
      for line in proc.stdout:
        lines.append(line)
        if line.startswith("Serving"):
          break
      url = re.search(r"http://127\.0\.0\.1:\d+/", lines[-1]).group(0)
      with urllib.request.urlopen(url, timeout=30) as page:
        assert b"<html" in page.read().lower()
      with urllib.request.urlopen(url + "model/manifest.json", timeout=30) as got:
        manifest = json.loads(got.read())
      assert manifest["ticket"] == 0 and manifest["tile"] == 32
      assert any("of the dense ONNX model" in line for line in lines)
      assert (tmp_path / "w" / "web" / "ticket_0_tile_32" / web_export.MANIFEST).exists()
    finally:  # SIGTERM, not SIGINT: a shell's background job (CI) starts with SIGINT ignored
      proc.terminate()
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
        raise

"""The command line, end to end: import a reference checkpoint, restore a PNG."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REFERENCE
from mirl_jax import models

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "all_in_one.py")


def _main(workdir, *args):
  cmd = [sys.executable, "-m", "mirl_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         *args]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_import_then_restore_a_png(tmp_path, reference_ticket):
  workdir = tmp_path / "run"
  done = _main(workdir, "--mode=import", f"--config.import_from={REFERENCE}")
  assert done.returncode == 0, done.stderr
  assert "35,376,967 parameters" in done.stdout and "11.71% remaining" in done.stdout

  again = _main(workdir, "--mode=import", f"--config.import_from={REFERENCE}")
  assert again.returncode != 0 and "already holds tickets [0]" in again.stderr

  rng = np.random.default_rng(0)
  photo = (rng.random((30, 44, 3)) * 255).astype(np.uint8)  # not a multiple of 8
  Image.fromarray(photo).save(tmp_path / "photo.png")
  out = tmp_path / "restored"
  done = _main(workdir, "--mode=restore", f"--config.restore.inputs={tmp_path / 'photo.png'}",
               f"--config.restore.output_dir={out}")
  assert done.returncode == 0, done.stderr
  restored = np.asarray(Image.open(out / "photo.png"))

  padded = np.pad(photo / np.float32(255), ((0, 2), (0, 4), (0, 0)), mode="reflect")
  want = models.PromptIR().apply({"params": reference_ticket[0]}, padded[None])
  want = np.clip(np.asarray(want)[0, :30, :44], 0, 1) * 255
  assert restored.shape == photo.shape
  assert np.abs(restored - want).max() <= 0.51  # only PNG rounding


def test_user_errors_are_clear(tmp_path):
  done = _main(tmp_path / "empty", "--mode=restore", "--config.restore.inputs=x.png",
               f"--config.restore.output_dir={tmp_path / 'out'}")
  assert done.returncode != 0 and "No ticket in" in done.stderr
  assert "Traceback" not in done.stderr
  done = _main(tmp_path / "empty", "--mode=restore", "--config.restore.inptus=x.png")
  assert done.returncode != 0 and 'Did you mean "inputs"' in done.stderr
  done = _main(tmp_path / "w", "--mode=import", f"--config.import_from={tmp_path / 'no.ckpt'}")
  assert done.returncode != 0 and "Checkpoint file not found" in done.stderr
  assert not (tmp_path / "w" / "tickets").exists()


def test_missing_datasets_are_named_with_the_fix(tmp_path):
  done = _main(tmp_path / "run", f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "data set train/denoise/WED is not prepared in" in done.stderr
  assert "--mode prepare" in done.stderr
  assert not (tmp_path / "run").exists()  # nothing written before the data is there
  done = _main(tmp_path / "run", "--mode=prepare", f"--config.data.manual_dir={tmp_path / 'raw'}",
               f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert str(tmp_path / "raw") in done.stderr and "test/dehaze/SOTS" in done.stderr

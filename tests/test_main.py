"""The command line, end to end: import, restore, and one line for every user error."""

import argparse
import fractions
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REFERENCE, TINY as TINY_MODEL
from mirl_jax import models

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "all_in_one.py")


def _main(workdir, *args):
  cmd = [sys.executable, "-m", "mirl_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *args]
  return subprocess.run(
      cmd,
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.mark.slow
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
  done = _main(
      workdir,
      "--mode=restore",
      f"--config.restore.inputs={tmp_path / 'photo.png'}",
      f"--config.restore.output_dir={out}",
  )
  assert done.returncode == 0, done.stderr
  restored = np.asarray(Image.open(out / "photo.png"))

  padded = np.pad(photo / np.float32(255), ((0, 2), (0, 4), (0, 0)), mode="reflect")
  want = models.PromptIR().apply({"params": reference_ticket[0]}, padded[None])
  want = np.clip(np.asarray(want)[0, :30, :44], 0, 1) * 255
  assert restored.shape == photo.shape
  assert np.abs(restored - want).max() <= 0.51  # only PNG rounding


def test_user_errors_are_clear(tmp_path):
  done = _main(
      tmp_path / "empty",
      "--mode=restore",
      "--config.restore.inputs=x.png",
      f"--config.restore.output_dir={tmp_path / 'out'}",
  )
  assert done.returncode != 0 and "Input not found: x.png" in done.stderr  # before the ticket
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
  done = _main(
      tmp_path / "empty",
      "--mode=restore",
      f"--config.restore.inputs={tmp_path / 'x.png'}",
      f"--config.restore.output_dir={tmp_path / 'out'}",
  )
  assert done.returncode != 0 and "No ticket in" in done.stderr
  assert not (tmp_path / "out").exists()
  assert "Traceback" not in done.stderr
  done = _main(tmp_path / "empty", "--mode=restore", "--config.restore.inptus=x.png")
  assert done.returncode != 0 and 'did you mean "inputs"' in done.stderr
  done = _main(tmp_path / "w", "--mode=import", f"--config.import_from={tmp_path / 'no.ckpt'}")
  assert done.returncode != 0 and "Checkpoint file not found" in done.stderr
  assert not (tmp_path / "w" / "tickets").exists()


def test_missing_datasets_are_named_with_the_fix(tmp_path):
  done = _main(tmp_path / "run", f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "data set train/denoise/WED is not prepared in" in done.stderr
  assert "--mode prepare" in done.stderr
  assert not (tmp_path / "run").exists()  # nothing written before the data is there
  done = _main(
      tmp_path / "run",
      "--mode=prepare",
      f"--config.data.manual_dir={tmp_path / 'raw'}",
      f"--config.data.data_dir={tmp_path / 'tfds'}",
  )
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert str(tmp_path / "raw") in done.stderr and "test/dehaze/SOTS" in done.stderr


# ----------------------------------------------------------------------------
# One line per user error.

TINY = str(ROOT / "tests" / "tiny_config.py")


def _cli(*args, cwd=ROOT):
  return subprocess.run(
      [sys.executable, "-m", "mirl_jax.main", *args],
      capture_output=True,
      text=True,
      cwd=cwd,
      timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


def _one_line_error(done, code, *names):
  lines = done.stderr.strip().splitlines()
  assert done.returncode == code, done.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
  assert "Traceback" not in done.stderr
  for name in names:
    assert name in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize(
    "override,suggestion",
    [
        ("--config.seeed=1", 'did you mean "seed"'),
        ("--config.eval.tickt=0", 'did you mean "ticket"'),
        ("--config.lottery.round=2", 'did you mean "rounds"'),
    ],
)
def test_a_mistyped_key_is_one_line_with_the_right_one(tmp_path, override, suggestion):
  done = _cli(f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}", override)
  _one_line_error(done, 1, override.split("=")[0], suggestion)
  assert not (tmp_path / "run").exists()


def test_config_files_that_do_not_load_are_named(tmp_path):
  missing = tmp_path / "nope.py"
  _one_line_error(_cli(f"--config={missing}", "--mode=config"), 1, str(missing), "no such file")
  broken = tmp_path / "broken.py"
  broken.write_text("import ml_collections\n\ndef get_config(:\n  pass\n")
  _one_line_error(_cli(f"--config={broken}", "--mode=config"), 1, str(broken), "line 3")
  failing = tmp_path / "failing.py"
  failing.write_text("def get_config():\n  return undefined_name\n")
  _one_line_error(
      _cli(f"--config={failing}", "--mode=config"), 1, str(failing), "line 2", "undefined_name"
  )


@pytest.mark.parametrize(
    "args,names",
    [
        (["--config.lottery.percent=150.0"], ["config.lottery.percent=150.0", "(0, 100)"]),
        (["--config.data.patch_size=60"], ["config.data.patch_size=60", "multiple of 8"]),
        (
            [
                "--mode=restore",
                "--config.restore.tile=100",
                "--config.restore.inputs=a.png",
                "--config.restore.output_dir={tmp}/out",
            ],
            ["config.restore.tile=100"],
        ),
        (
            [
                "--mode=restore",
                "--config.restore.format=gif",
                "--config.restore.inputs=a.png",
                "--config.restore.output_dir={tmp}/out",
            ],
            ["config.restore.format='gif'"],
        ),
        (["--mode=import"], ["--config.import_from=FILE"]),
    ],
)
def test_invalid_values_are_refused_before_anything_is_written(tmp_path, args, names):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  _one_line_error(_cli(f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}", *args), 1, *names)
  assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,names",
    [
        (["--wrkdir=x"], ["wrkdir", "workdir"]),
        (["--config.model.dim=wide"], ["--config.model.dim=wide"]),
        (["--mode=train"], ["--workdir"]),
        (["--workdir=x", "stray"], ["stray"]),
    ],
)
def test_flag_syntax_errors_exit_with_code_2(args, names):
  _one_line_error(_cli(f"--config={CONFIG}", *args), 2, *names)


def test_help_exits_0_and_names_the_modes():
  done = _cli("--help")
  assert done.returncode == 0, done.stderr
  assert "--mode" in done.stdout and "--mode config" in done.stdout


def test_mode_config_prints_every_key_with_its_value_and_meaning():
  done = _cli(
      f"--config={ROOT / 'configs' / 'demo.py'}", "--mode=config", "--config.restore.tile=256"
  )
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  tile = next(l for l in lines if l.startswith("restore.tile = "))
  assert tile.startswith("restore.tile = 256 ") and "overlapping tiles" in tile
  assert any(l.startswith("model.dim = 8 ") and "# channels" in l for l in lines)
  for key in (
      "restore.inputs",
      "restore.overwrite",
      "restore.format",
      "eval.ticket",
      "data.manual_dir",
      "lottery.rounds",
  ):
    assert any(l.startswith(f"{key} = ") and "#" in l for l in lines), key


def test_wrong_architecture_and_corrupt_checkpoints_are_one_line(tmp_path):
  demo = str(ROOT / "configs" / "demo.py")
  line = _one_line_error(
      _cli(
          f"--config={demo}",
          f"--workdir={tmp_path / 'a'}",
          "--mode=import",
          f"--config.import_from={REFERENCE}",
      ),
      1,
      str(REFERENCE),
  )
  assert "is --config the one the checkpoint was made with?" in line
  garbage = tmp_path / "broken.pth"
  garbage.write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
  line = _one_line_error(
      _cli(
          f"--config={CONFIG}",
          f"--workdir={tmp_path / 'b'}",
          "--mode=import",
          f"--config.import_from={garbage}",
      ),
      1,
      str(garbage),
  )
  assert "weights_only" not in line
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------
# Restore keeps users' files.


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A workdir holding ticket 0 of tests/tiny_config.py's network."""
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import checkpointing, masks  # pylint: disable=import-outside-toplevel

  workdir = tmp_path_factory.mktemp("tiny") / "run"
  params = models.init_params(TINY_MODEL, jax.random.key(0))
  checkpointing.save_ticket(str(workdir), 0, params, masks.dense_masks(params), {"round": 0})
  return workdir


def test_an_imported_ticket_trains_only_with_its_theta_0(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import convert  # pylint: disable=import-outside-toplevel

  model = TINY_MODEL
  theta_0 = convert.params_to_torch(models.init_params(model, jax.random.key(5)))
  theta_0.update(convert.params_to_torch(convert.unused_init(model, jax.random.key(5))))
  np.savez(tmp_path / "initial_state_dict.npz", **theta_0)
  np.savez(tmp_path / "mirl.npz", **{k: v * 0.9 for k, v in theta_0.items()})
  workdir = tmp_path / "run"
  done = _cli(
      f"--config={TINY}",
      f"--workdir={workdir}",
      "--mode=import",
      f"--config.import_from={tmp_path / 'mirl.npz'}",
  )
  assert done.returncode == 0, done.stderr
  line = _one_line_error(
      _cli(f"--config={TINY}", f"--workdir={workdir}"),
      1,
      str(tmp_path / "mirl.npz"),
      "--config.import_init=",
  )
  assert "theta_0" in line
  assert sorted(os.listdir(workdir)) == ["tickets", "unused"]  # no data read, nothing written

  done = _cli(
      f"--config={TINY}",
      f"--workdir={tmp_path / 'both'}",
      "--mode=import",
      f"--config.import_from={tmp_path / 'mirl.npz'}",
      f"--config.import_init={tmp_path / 'initial_state_dict.npz'}",
  )
  assert done.returncode == 0, done.stderr
  assert "Imported theta_0" in done.stdout and "100.00% remaining" in done.stdout
  _one_line_error(
      _cli(
          f"--config={TINY}",
          f"--workdir={tmp_path / 'both'}",
          "--mode=import",
          f"--config.import_init={tmp_path / 'mirl.npz'}",
      ),
      1,
      "already holds tickets [0]",
  )
  pruned = dict(theta_0, **{"output.weight": np.zeros_like(theta_0["output.weight"])})
  np.savez(tmp_path / "pruned.npz", **pruned)
  _one_line_error(
      _cli(
          f"--config={TINY}",
          f"--workdir={tmp_path / 'third'}",
          "--mode=import",
          f"--config.import_init={tmp_path / 'pruned.npz'}",
      ),
      1,
      str(tmp_path / "pruned.npz"),
      "expected initial weights",
  )
  assert not (tmp_path / "third").exists() or not os.listdir(tmp_path / "third")


def _photos(folder):
  """One image of each kind a user brings: grey, alpha, 16-bit, an EXIF-rotated JPEG."""
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True)
  Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8), "L").save(folder / "grey.png")
  Image.fromarray((rng.random((24, 32, 4)) * 255).astype(np.uint8), "RGBA").save(
      folder / "alpha.png"
  )
  Image.fromarray((rng.random((16, 24)) * 65535).astype(np.uint16)).save(folder / "deep.png")
  exif = Image.Exif()
  exif[0x0112] = 6  # rotated: stored 40 wide, 24 high; shown 24 wide, 40 high
  exif[0x013B] = "A. Photographer"
  Image.fromarray((rng.random((24, 40, 3)) * 255).astype(np.uint8)).save(
      folder / "photo.jpg", quality=90, exif=exif
  )
  return {p.name: p.read_bytes() for p in folder.iterdir()}


def _restore(workdir, inputs, out, *extra):
  return _cli(
      f"--config={TINY}",
      f"--workdir={workdir}",
      "--mode=restore",
      f"--config.restore.inputs={inputs}",
      f"--config.restore.output_dir={out}",
      *extra,
  )


@pytest.mark.slow
def test_restore_never_overwrites_a_users_file(tmp_path, tiny_workdir):
  photos = tmp_path / "photos"
  before = _photos(photos)
  _one_line_error(_restore(tiny_workdir, photos, photos), 1, str(photos))
  _one_line_error(_restore(tiny_workdir, photos / "grey.png", photos), 1, "grey.png")
  _one_line_error(
      _restore(
          tiny_workdir, f"{photos}/", f"{photos}/../photos", "--config.restore.overwrite=True"
      ),
      1,
      "photos",
  )
  assert {p.name: p.read_bytes() for p in photos.iterdir()} == before

  out = tmp_path / "restored"
  assert _restore(tiny_workdir, photos, out).returncode == 0
  written = {p.name: p.read_bytes() for p in out.iterdir()}
  line = _one_line_error(_restore(tiny_workdir, photos, out), 1, "--config.restore.overwrite=True")
  assert "grey.png" in line or "alpha.png" in line
  assert {p.name: p.read_bytes() for p in out.iterdir()} == written
  assert _restore(tiny_workdir, photos, out, "--config.restore.overwrite=True").returncode == 0
  assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_restore_keeps_images_as_they_came_and_shows_progress(tmp_path, tiny_workdir):
  photos = tmp_path / "photos"
  _photos(photos)
  out = tmp_path / "restored"
  done = _restore(
      tiny_workdir, photos, out, "--config.restore.tile=16", "--config.restore.overlap=0"
  )
  assert done.returncode == 0, done.stderr
  assert "Restored 4 image(s)" in done.stdout
  assert "tile" in done.stderr and "image" in done.stderr  # a bar over tiles and one over images
  assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "deep.png", "grey.png", "photo.jpg"]
  with Image.open(out / "grey.png") as grey:
    assert grey.mode == "L" and grey.size == (48, 40)
  with Image.open(out / "alpha.png") as alpha, Image.open(photos / "alpha.png") as original:
    assert alpha.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(alpha)[..., 3], np.asarray(original)[..., 3])
  with Image.open(out / "deep.png") as deep:
    assert deep.mode.startswith("I") and np.asarray(deep).max() > 255  # still 16-bit
  with Image.open(out / "photo.jpg") as photo:
    assert photo.format == "JPEG" and photo.size == (24, 40)  # turned upright
    assert not photo.getexif() and "icc_profile" not in photo.info


def test_import_a_lightning_checkpoint_as_lightning_writes_it(tmp_path, reference_state_dict):
  torch = pytest.importorskip("torch")
  state = {f"net.{k}": torch.from_numpy(np.array(v)) for k, v in reference_state_dict.items()}
  options = argparse.Namespace(lr=2e-4, batch_size=8, de_type=["denoise_15", "derain"])
  checkpoint = {
      "epoch": 119,
      "global_step": 120,
      "pytorch-lightning_version": "2.4.0",
      "state_dict": state,
      "hparams_name": "kwargs",
      "hyper_parameters": {"opt": options},
      "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "params": []}]}],
      "lr_schedulers": [{"last_epoch": 119, "base_lrs": [2e-4]}],
      "loops": {},
      "callbacks": {},
  }
  torch.save(checkpoint, tmp_path / "mirl.ckpt")
  done = _main(tmp_path / "run", "--mode=import", f"--config.import_from={tmp_path / 'mirl.ckpt'}")
  assert done.returncode == 0, done.stderr
  assert "35,376,967 parameters" in done.stdout

  checkpoint["hyper_parameters"]["opt"] = fractions.Fraction(1, 3)  # not a weight, not inert
  torch.save(checkpoint, tmp_path / "odd.ckpt")
  line = _one_line_error(
      _main(tmp_path / "odd", "--mode=import", f"--config.import_from={tmp_path / 'odd.ckpt'}"),
      1,
      "odd.ckpt",
      "fractions.Fraction",
  )
  assert "weights_only" not in line and not (tmp_path / "odd").exists()

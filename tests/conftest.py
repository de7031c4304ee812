"""Shared fixtures: the PyTorch reference outputs live in ../shared/fixtures; the tiny
PromptIR every test that needs a real network builds."""

import contextlib
import os
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tiny_config imports configs/, which sits beside the package
  sys.path.insert(0, str(ROOT))

from mirl_jax import models  # pylint: disable=wrong-import-position
from tiny_config import get_config as tiny_config  # pylint: disable=wrong-import-position

# One tiny network for all tests: tests/tiny_config.py's, which the CLI tests' child
# processes load as a config file, so tests in-process and on the command line share it.
TINY_MODEL_KWARGS = tiny_config().model.to_dict()
TINY = models.PromptIR(**TINY_MODEL_KWARGS)


def flip_bit(path, position=None) -> None:
  """Flips one bit of the byte at `position` (default: the middle) of the file at `path`."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2 if position is None else position)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
REFERENCE = FIXTURES / "promptir_reference.npz"


@pytest.fixture(scope="session")
def reference():
  if not REFERENCE.exists():
    pytest.fail(f"missing {REFERENCE}: the shared fixtures must sit beside the project")
  with np.load(REFERENCE) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def reference_state_dict(reference):
  return {k[len("state_dict/") :]: v for k, v in reference.items() if k.startswith("state_dict/")}


@pytest.fixture(scope="session")
def reference_ticket(reference_state_dict):
  from mirl_jax import convert

  return convert.params_from_torch(reference_state_dict)


NETWORK = FIXTURES.parent / "reference" / "network.py"


@pytest.fixture(scope="session")
def reference_network():
  """The reference's network module (../shared/reference/network.py): PromptIR in PyTorch."""
  pytest.importorskip("torch")
  pytest.importorskip("einops")
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("reference_network", NETWORK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


#: The demo's evaluations ("degradation/test set"): what every demo run reports.
DEMO_EVALUATIONS = {
    "denoise_15/DemoClean",
    "denoise_25/DemoClean",
    "denoise_50/DemoClean",
    "derain/DemoRain",
    "dehaze/DemoHaze",
}


def eval_result(degradation, dataset, images, psnr, ssim, input_psnr, input_ssim) -> dict:
  """One evaluation as evaluate.evaluate returns it."""
  return dict(
      task=degradation.split("_")[0],
      degradation=degradation,
      dataset=dataset,
      images=images,
      psnr=psnr,
      ssim=ssim,
      input_psnr=input_psnr,
      input_ssim=input_ssim,
  )


def tensorboard_scalars(folder) -> dict:
  """{tag: {step: value}} from tensorboardX's event files (TFRecords of Event protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  scalars = {}
  for path in sorted(folder.rglob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset + 12 <= len(data):  # length (8 bytes), its CRC (4), the event, its CRC (4)
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      if offset + 16 + length > len(data):
        break  # still being written
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


@contextlib.contextmanager
def serving(server):
  """A mirl_jax.serve server answering from a thread until the block ends."""
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  try:
    yield server
  finally:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)

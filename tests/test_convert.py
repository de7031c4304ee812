"""PyTorch state_dicts and checkpoint files to Flax params and masks."""

import argparse
import collections
import fractions
import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

from conftest import TINY
from mirl_jax import convert
from mirl_jax import masks as masks_lib
from mirl_jax import models


def _flat(tree):
  return {
      masks_lib.path_name(p): np.asarray(v)
      for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def test_masks_mark_the_surviving_weights(reference, reference_ticket):
  params, masks = reference_ticket
  counts = masks_lib.count(params, masks)
  assert counts["params"] == 35_376_967
  assert counts["prunable"] == int(reference["meta/total_prunable"])
  assert counts["alive"] == int(reference["meta/alive_prunable"])
  assert masks["prompt1"]["prompt_param"] is None  # never pruned
  assert masks["latent_0"]["attn"]["temperature"] is None
  np.testing.assert_array_equal(masks["output"]["kernel"], params["output"]["kernel"] != 0)


def test_layouts_follow_pytorch(reference_state_dict, reference_ticket):
  params, _ = reference_ticket
  sd = reference_state_dict
  np.testing.assert_array_equal(  # OIHW -> HWIO
      params["patch_embed"]["kernel"][1, 2, 0, 5], sd["patch_embed.proj.weight"][5, 0, 1, 2]
  )
  np.testing.assert_array_equal(  # depthwise (C, 1, 3, 3) -> (3, 3, 1, C)
      params["latent_0"]["ffn"]["dwconv"]["kernel"][2, 0, 0, 7],
      sd["latent.0.ffn.dwconv.weight"][7, 0, 2, 0],
  )
  np.testing.assert_array_equal(  # linear (out, in) -> (in, out)
      params["prompt2"]["linear_layer"]["kernel"], sd["prompt2.linear_layer.weight"].T
  )
  np.testing.assert_array_equal(  # (1, L, C, S, S) -> (L, S, S, C)
      params["prompt3"]["prompt_param"][4, 1, 2, 3], sd["prompt3.prompt_param"][0, 4, 3, 1, 2]
  )
  np.testing.assert_array_equal(
      params["encoder_level2_1"]["norm2"]["scale"], sd["encoder_level2.1.norm2.body.weight"]
  )


def test_round_trip_back_to_pytorch_names(reference_state_dict, reference_ticket):
  back = convert.params_to_torch(reference_ticket[0])
  used = {k: v for k, v in reference_state_dict.items() if k.split(".")[0] not in convert.UNUSED}
  assert set(back) == set(used)
  for name, value in used.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_lightning_prefix_and_unused_convs_are_accepted(reference_state_dict, reference_ticket):
  lightning = {"net." + k: v for k, v in reference_state_dict.items()}
  assert any(k.startswith("net.chnl_reduce1") for k in lightning)
  params, _ = convert.params_from_torch(lightning)
  got, want = _flat(params), _flat(reference_ticket[0])
  assert all(np.array_equal(got[k], want[k]) for k in want)


def test_mismatches_are_summed_up_in_one_line(reference_state_dict):
  bad = dict(reference_state_dict)
  del bad["latent.3.attn.qkv.weight"]
  bad["latent.9.attn.qkv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  bad["output.weight"] = np.zeros((3, 48, 3, 3), np.float32)
  with pytest.raises(ValueError) as info:
    convert.params_from_torch(bad)
  assert str(info.value) == (
      "The state_dict does not match PromptIR: 1 missing tensor (latent.3.attn.qkv.weight); "
      "1 unexpected tensor (latent.9.attn.qkv.weight); 1 shape mismatch (output.weight: "
      "got (3, 48, 3, 3), expected (3, 96, 3, 3)); "
      "is --config the one the checkpoint was made with?"
  )


def test_another_config_gets_counts_not_pages(reference_state_dict):
  with pytest.raises(ValueError) as info:  # the full network read with a small config
    convert.params_from_torch(reference_state_dict, TINY)
  message = str(info.value)
  assert "\n" not in message and len(message) < 800
  assert "396 unexpected tensors (encoder_level1.1.norm1.body.weight, " in message
  assert (
      "140 shape mismatches (patch_embed.proj.weight: got (48, 3, 3, 3), expected (4, 3, 3, 3), "
  ) in message
  assert message.endswith(", ...); is --config the one the checkpoint was made with?")


def test_npz_files_load(tmp_path, reference_state_dict):
  path = tmp_path / "plain.npz"
  np.savez(path, **{k: v for k, v in list(reference_state_dict.items())[:3]})
  loaded = convert.load_state_dict(str(path))
  assert list(loaded) == list(reference_state_dict)[:3]


@pytest.fixture(scope="module")
def torch_state_dict(reference_state_dict):
  torch = pytest.importorskip("torch")
  return collections.OrderedDict((k, torch.from_numpy(v)) for k, v in reference_state_dict.items())


def _same_params(a, b) -> bool:
  a, b = _flat(a), _flat(b)
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_torch_checkpoint_files_round_trip(tmp_path, torch_state_dict, reference_ticket):
  torch = pytest.importorskip("torch")
  ckpt = tmp_path / "mirl.ckpt"  # all that Trainer.save_checkpoint writes for MIR-L
  torch.save(
      {
          "epoch": 4,
          "global_step": 1000,
          "pytorch-lightning_version": "2.4.0",
          "state_dict": collections.OrderedDict(
              ("net." + k, v) for k, v in torch_state_dict.items()
          ),
          "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 1000}}},
          "callbacks": {
              "ModelCheckpoint{'monitor': None}": {
                  "best_model_score": torch.tensor(0.5),
                  "dirpath": "./checkpoints",
              }
          },
          "optimizer_states": [
              {
                  "state": {
                      0: {
                          "step": torch.tensor(1000.0),
                          "exp_avg": torch.zeros(3),
                          "exp_avg_sq": torch.zeros(3),
                      }
                  },
                  "param_groups": [
                      {
                          "lr": 2e-4,
                          "betas": (0.9, 0.999),
                          "eps": 1e-8,
                          "weight_decay": 0.01,
                          "amsgrad": False,
                          "params": [0],
                      }
                  ],
              }
          ],
          "lr_schedulers": [
              {
                  "warmup_epochs": 15,
                  "max_epochs": 120,
                  "base_lrs": [2e-4],
                  "last_epoch": 4,
                  "_step_count": 5,
                  "_last_lr": [1e-4],
              }
          ],
          "hparams_name": "kwargs",
          "hyper_parameters": {
              "opt": argparse.Namespace(
                  lr=2e-4, epochs=120, mode=["all_in_one"], ckpt_dir="./checkpoints"
              )
          },
      },
      ckpt,
  )
  pth = tmp_path / "promptir.pth"  # a plain PromptIR state_dict
  torch.save(torch_state_dict, pth)
  for path in (ckpt, pth):
    params, masks = convert.params_from_torch(convert.load_state_dict(str(path)))
    assert _same_params(params, reference_ticket[0]), path
    assert masks_lib.count(params, masks)["alive"] == masks_lib.count(*reference_ticket)["alive"]


def _module_holding(torch, tensors):
  """A torch module whose state_dict is `tensors`, without the reference code."""
  root = torch.nn.Module()
  for name, value in tensors.items():
    *path, leaf = name.split(".")
    node = root
    for part in path:
      if not hasattr(node, part):
        node.add_module(part, torch.nn.Module())
      node = getattr(node, part)
    node.register_parameter(leaf, torch.nn.Parameter(value.clone()))
  return root


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_checkpoints_that_lightning_writes_import(tmp_path, torch_state_dict):
  torch = pytest.importorskip("torch")
  pl = pytest.importorskip(
      "lightning.pytorch", reason="Lightning is not installed (pip install lightning)"
  )

  class MIRL(pl.LightningModule):
    """MIR-L's LightningModule, built from parsed options as its train.py does."""

    def __init__(self, opt):
      super().__init__()
      self.save_hyperparameters()
      self.net = _module_holding(torch, torch_state_dict)

    def training_step(self, batch, batch_idx):
      return (self.net.output.weight**2).mean()  # a real step, without the 35M forward

    def configure_optimizers(self):
      optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.opt.lr)
      return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=120)]

  module = MIRL(argparse.Namespace(lr=2e-4, epochs=120, mode=["derain"]))
  trainer = pl.Trainer(
      max_steps=1,
      accelerator="cpu",
      devices=1,
      logger=False,
      enable_checkpointing=False,
      enable_progress_bar=False,
      enable_model_summary=False,
      default_root_dir=tmp_path,
  )
  data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1, 1)))
  trainer.fit(module, data)
  path = tmp_path / "model-epoch-00-step0.ckpt"
  trainer.save_checkpoint(path)

  written = torch.load(path, weights_only=False)  # our own file: safe to unpickle
  assert isinstance(written["hyper_parameters"]["opt"], argparse.Namespace)
  assert written["optimizer_states"][0]["state"] and written["lr_schedulers"]
  params, _ = convert.params_from_torch(convert.load_state_dict(str(path)))
  plain, _ = convert.params_from_torch(module.net.state_dict())
  assert _same_params(params, plain)


class _Ordered(collections.OrderedDict):
  """A class of the test's own: unpickling it would run the test's code."""


class _Sneaky:
  """Unpickling it makes a folder: the test sees whether any code ran."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


def test_checkpoints_holding_other_classes_are_refused(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "code-ran"
  for name, extra in (
      ("_Ordered", _Ordered(a=torch.zeros(1))),
      ("fractions.Fraction", fractions.Fraction(1, 3)),
      ("mkdir", _Sneaky(str(marker))),
  ):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"net.a": torch.zeros(1)}, "hyper_parameters": {"x": extra}}, path)
    with pytest.raises(ValueError) as info:
      convert.load_state_dict(str(path))
    message = str(info.value)
    assert "model.ckpt holds a pickled " in message and name in message
    assert "mirl_jax refuses to unpickle" in message and "save the state_dict alone" in message
    assert "\n" not in message and "weights_only" not in message
  assert not marker.exists()


def test_older_torch_allows_namespaces_or_says_what_to_install(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  path = tmp_path / "hparams.ckpt"
  torch.save(
      {
          "state_dict": {"net.a": torch.ones(1)},
          "hyper_parameters": {"opt": argparse.Namespace(lr=1.0)},
      },
      path,
  )
  serialization = torch.serialization
  allowed, clear, add = (
      serialization.get_safe_globals(),
      serialization.clear_safe_globals,
      serialization.add_safe_globals,
  )
  monkeypatch.delattr(serialization, "safe_globals")  # as in torch 2.4
  try:
    assert list(convert.load_state_dict(str(path))) == ["net.a"]
    clear()
    monkeypatch.delattr(serialization, "add_safe_globals")  # as in torch < 2.4
    with pytest.raises(
        ValueError,
        match=r"hparams.ckpt holds argparse.Namespace, which "
        r"PyTorch .* cannot allow when reading weights only: install torch>=2.4",
    ):
      convert.load_state_dict(str(path))
  finally:  # the allow-list is global: leave it as it was
    clear()
    add(allowed)


def _assert_unreadable(path, what):
  """Our own one line for a file the reader cannot read, never the reader's pages."""
  with pytest.raises(ValueError) as info:
    convert.load_state_dict(str(path))
  assert str(info.value) == (
      f"{path} is not a readable {what}: its {path.stat().st_size:,} "
      "bytes are truncated, damaged or another kind of file"
  )


def test_bad_files_get_clear_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="not found"):
    convert.load_state_dict(str(tmp_path / "absent.ckpt"))
  (tmp_path / "weights.h5").write_bytes(b"x")
  with pytest.raises(ValueError, match="expected .ckpt, .pth, .pt or .npz"):
    convert.load_state_dict(str(tmp_path / "weights.h5"))

  np.savez(tmp_path / "good.npz", a=np.zeros(100))
  good = (tmp_path / "good.npz").read_bytes()
  (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
  (tmp_path / "garbage.npz").write_bytes(b"not a numpy file")
  for name in ("truncated.npz", "garbage.npz"):
    _assert_unreadable(tmp_path / name, ".npz archive (arrays written by numpy.savez)")

  corrupt = tmp_path / "corrupt.ckpt"
  corrupt.write_bytes(b"not a torch file")
  if importlib.util.find_spec("torch"):
    import torch  # pylint: disable=import-outside-toplevel

    torch.save({"a": torch.zeros(100)}, tmp_path / "good.pth")
    good = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("corrupt.ckpt", "truncated.pth", "empty.pt"):
      _assert_unreadable(
          tmp_path / name, "PyTorch checkpoint (a zip archive written by torch.save)"
      )
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(ValueError, match=r"pip install 'mirl_jax\[torch\]'"):
    convert.load_state_dict(str(corrupt))


def test_tiny_model_converts_by_the_same_rule():
  params = models.init_params(TINY, jax.random.key(0))
  again, masks = convert.params_from_torch(convert.params_to_torch(params), TINY)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
  assert masks_lib.count(again, masks)["remaining"] == 1.0

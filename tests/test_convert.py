"""PyTorch state_dicts and checkpoint files to Flax params and masks."""

import importlib.util
import sys

import jax
import numpy as np
import pytest

from mirl_jax import convert
from mirl_jax import masks as masks_lib
from mirl_jax import models


def _flat(tree):
  return {masks_lib.path_name(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
      params["patch_embed"]["kernel"][1, 2, 0, 5], sd["patch_embed.proj.weight"][5, 0, 1, 2])
  np.testing.assert_array_equal(  # depthwise (C, 1, 3, 3) -> (3, 3, 1, C)
      params["latent_0"]["ffn"]["dwconv"]["kernel"][2, 0, 0, 7],
      sd["latent.0.ffn.dwconv.weight"][7, 0, 2, 0])
  np.testing.assert_array_equal(  # linear (out, in) -> (in, out)
      params["prompt2"]["linear_layer"]["kernel"], sd["prompt2.linear_layer.weight"].T)
  np.testing.assert_array_equal(  # (1, L, C, S, S) -> (L, S, S, C)
      params["prompt3"]["prompt_param"][4, 1, 2, 3], sd["prompt3.prompt_param"][0, 4, 3, 1, 2])
  np.testing.assert_array_equal(
      params["encoder_level2_1"]["norm2"]["scale"], sd["encoder_level2.1.norm2.body.weight"])


def test_round_trip_back_to_pytorch_names(reference_state_dict, reference_ticket):
  back = convert.params_to_torch(reference_ticket[0])
  used = {k: v for k, v in reference_state_dict.items()
          if k.split(".")[0] not in convert.UNUSED}
  assert set(back) == set(used)
  for name, value in used.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_lightning_prefix_and_unused_convs_are_accepted(reference_state_dict, reference_ticket):
  lightning = {"net." + k: v for k, v in reference_state_dict.items()}
  assert any(k.startswith("net.chnl_reduce1") for k in lightning)
  params, _ = convert.params_from_torch(lightning)
  got, want = _flat(params), _flat(reference_ticket[0])
  assert all(np.array_equal(got[k], want[k]) for k in want)


def test_mismatches_are_listed_together(reference_state_dict):
  bad = dict(reference_state_dict)
  del bad["latent.3.attn.qkv.weight"]
  bad["latent.9.attn.qkv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  bad["output.weight"] = np.zeros((3, 48, 3, 3), np.float32)
  with pytest.raises(ValueError) as info:
    convert.params_from_torch(bad)
  message = str(info.value)
  assert "missing key: latent.3.attn.qkv.weight" in message
  assert "unexpected key: latent.9.attn.qkv.weight" in message
  assert "shape mismatch: output.weight: got (3, 48, 3, 3)" in message


def test_npz_files_load(tmp_path, reference_state_dict):
  path = tmp_path / "plain.npz"
  np.savez(path, **{k: v for k, v in list(reference_state_dict.items())[:3]})
  loaded = convert.load_state_dict(str(path))
  assert list(loaded) == list(reference_state_dict)[:3]


def test_torch_checkpoint_files_round_trip(tmp_path, reference_state_dict, reference_ticket):
  torch = pytest.importorskip("torch")
  tensors = {k: torch.from_numpy(v.copy()) for k, v in reference_state_dict.items()}
  ckpt = tmp_path / "mirl.ckpt"  # Lightning's form: {'state_dict': {'net.<name>': ...}}
  torch.save({"epoch": 3, "state_dict": {"net." + k: v for k, v in tensors.items()}}, ckpt)
  pth = tmp_path / "promptir.pth"  # a plain PromptIR state_dict
  torch.save(tensors, pth)
  want = _flat(reference_ticket[0])
  for path in (ckpt, pth):
    params, masks = convert.params_from_torch(convert.load_state_dict(str(path)))
    got = _flat(params)
    assert all(np.array_equal(got[k], want[k]) for k in want), path
    assert masks_lib.count(params, masks)["alive"] == masks_lib.count(
        *reference_ticket)["alive"]


def test_bad_files_get_clear_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="not found"):
    convert.load_state_dict(str(tmp_path / "absent.ckpt"))
  (tmp_path / "weights.h5").write_bytes(b"x")
  with pytest.raises(ValueError, match="expected .ckpt, .pth, .pt or .npz"):
    convert.load_state_dict(str(tmp_path / "weights.h5"))
  corrupt = tmp_path / "corrupt.ckpt"
  corrupt.write_bytes(b"not a torch file")
  if importlib.util.find_spec("torch"):
    with pytest.raises(ValueError, match="corrupt.ckpt is not a readable PyTorch"):
      convert.load_state_dict(str(corrupt))
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(ValueError, match=r"pip install 'mirl_jax\[torch\]'"):
    convert.load_state_dict(str(corrupt))


def test_tiny_model_converts_by_the_same_rule():
  model = models.PromptIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                          heads=(1, 1, 1, 1), prompt_dims=(8, 8, 8),
                          prompt_sizes=(4, 4, 4), noise_level_heads=1)
  params = models.init_params(model, jax.random.key(0))
  again, masks = convert.params_from_torch(convert.params_to_torch(params), model)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(again)))
  assert masks_lib.count(again, masks)["remaining"] == 1.0

"""Pruning masks equal the reference's bit for bit; rewinding variants; re-init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from mirl_jax import convert, lottery, masks as masks_lib, sparsity
from mirl_jax.models import PromptIR, TransformerBlock, param_shapes

# `reference` (the fixture's arrays) and `reference_ticket` ((params, masks) of
# its state_dict) come from conftest.py.


def _expected(arrays, prefix, torch_masks):
  out = {}
  for name, got in torch_masks.items():
    packed = arrays[prefix + name]
    out[name] = np.unpackbits(packed)[: got.size].reshape(got.shape).astype(bool)
  return out


@pytest.mark.parametrize(
    "scope,prefix", [("global", "next_global_mask/"), ("layerwise", "next_layerwise_mask/")]
)
def test_prune_matches_reference_bit_for_bit(reference, reference_ticket, scope, prefix):
  (params, masks), arrays = reference_ticket, reference
  new = convert.params_to_torch(lottery.prune(params, masks, 20, scope))
  assert set(new) == {k[len(prefix) :] for k in arrays if k.startswith(prefix)}
  expected = _expected(arrays, prefix, new)
  wrong = {k: int((new[k] != expected[k]).sum()) for k in new if (new[k] != expected[k]).any()}
  assert not wrong, f"{scope} masks differ from the reference: {wrong}"


def test_global_threshold_and_counts_match_reference(reference, reference_ticket):
  (params, masks), arrays = reference_ticket, reference
  threshold = lottery.global_threshold(params, masks, 20)
  assert threshold.dtype == np.float32
  assert threshold == arrays["meta/next_global_threshold"]
  total = sparsity.report(params, masks)[-1]
  assert total["prunable"] == arrays["meta/total_prunable"]
  assert total["alive_prunable"] == arrays["meta/alive_prunable"]


def test_the_reference_pool_counts_the_unused_convs(reference_state_dict, reference_ticket):
  """Two rounds of the official code's rule over its whole state dict, unused convs at
  theta_0 and never trained, against prune_reference_pool."""
  params, masks = reference_ticket
  unused = convert.unused_from_torch(reference_state_dict, PromptIR())
  assert sum(w["kernel"].size for w in unused.values()) == 215_296
  unused_masks = masks_lib.masks_from_params(unused)
  state = dict(reference_state_dict)
  rng = np.random.default_rng(0)
  for _ in range(2):
    weights = {k: v for k, v in state.items() if "weight" in k}
    alive = np.concatenate([np.abs(w[w != 0]) for w in weights.values()])
    threshold = np.percentile(alive, 20)
    want = {k: (w != 0) & ~(np.abs(w) < threshold) for k, w in weights.items()}
    masks, unused_masks = lottery.prune_reference_pool(params, masks, unused, unused_masks, 20)
    got = {**convert.params_to_torch(masks), **convert.params_to_torch(unused_masks)}
    assert set(got) == set(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    default = convert.params_to_torch(lottery.prune(params, reference_ticket[1], 20))
    assert any(not np.array_equal(default[k], want[k]) for k in default)  # the pool matters
    # "Retrain" the survivors; the unused convs keep their theta_0 values, masked.
    params = jax.tree.map(
        lambda p, m: p
        if m is None
        else np.where(m, p + rng.normal(0, 0.01, p.shape).astype(np.float32), 0),
        params,
        masks,
        is_leaf=lambda x: x is None,
    )
    state = {
        **convert.params_to_torch(params),
        **convert.params_to_torch(lottery.rewind(unused, unused_masks, unused)),
    }


def test_prune_removes_a_fifth_of_survivors_and_never_revives():
  rng = np.random.default_rng(0)
  params = {
      "a": {
          "kernel": rng.normal(size=(50, 40)).astype(np.float32),
          "bias": np.ones(40, np.float32),
      },
      "output": {"kernel": rng.normal(size=(3, 3, 4, 3)).astype(np.float32)},
  }
  masks = masks_lib.dense_masks(params)
  masks["a"]["kernel"][:10] = False  # already pruned rows must stay pruned
  before = masks["a"]["kernel"].copy()
  for scope in lottery.SCOPES:
    new = lottery.prune(params, masks, 20, scope)
    assert new["a"]["bias"] is None
    assert not (new["a"]["kernel"] & ~before).any()
    assert new["a"]["kernel"].sum() == pytest.approx(0.8 * before.sum(), abs=2)
  layerwise = lottery.prune(params, masks, 20, "layerwise")
  assert layerwise["output"]["kernel"].sum() == pytest.approx(0.9 * 108, abs=1)


def test_prune_rejects_bad_arguments():
  params = {"a": {"kernel": np.ones((2, 2), np.float32)}}
  masks = masks_lib.dense_masks(params)
  with pytest.raises(ValueError, match="scope='tensor'"):
    lottery.prune(params, masks, 20, "tensor")
  with pytest.raises(ValueError, match="percent=120"):
    lottery.prune(params, masks, 120)
  with pytest.raises(ValueError, match="mask of a/kernel has shape"):
    lottery.prune(params, {"a": {"kernel": np.ones((3,), bool)}}, 20)


def _random_tree(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)


def test_rewind_variants():
  shapes = param_shapes(TINY)
  trained, init = _random_tree(shapes, 1), _random_tree(shapes, 2)
  masks = lottery.prune(trained, masks_lib.dense_masks(trained), 50)
  paper = lottery.rewind(trained, masks, init)
  official = lottery.rewind(trained, masks, init, keep_trained=True)
  flat = jax.tree_util.tree_flatten_with_path(paper)[0]
  checked = set()
  for (path, p), o, t, i, m in zip(
      flat,
      jax.tree.leaves(official),
      jax.tree.leaves(trained),
      jax.tree.leaves(init),
      jax.tree.leaves(masks, is_leaf=lambda x: x is None),
  ):
    leaf = masks_lib.path_name(path).rsplit("/", 1)[-1]
    checked.add(leaf)
    expected = np.where(m, i, 0) if m is not None else i
    np.testing.assert_array_equal(p, expected, err_msg=masks_lib.path_name(path))
    np.testing.assert_array_equal(o, t if leaf in lottery.TRAINED_KEPT else expected)
  assert {"kernel", "scale", "bias", "prompt_param", "temperature"} <= checked


def test_rewind_targets():
  late = {"x": jnp.ones(2)}
  assert lottery.rewind_target("late", late_params=late) is late
  with pytest.raises(ValueError, match="late_params"):
    lottery.rewind_target("late")
  with pytest.raises(ValueError, match="rewind mode='best'"):
    lottery.rewind_target("best", model=TINY, key=jax.random.key(0))


def test_init_is_bitwise_reproducible_and_random_control_differs():
  first = lottery.rewind_target("init", model=TINY, key=jax.random.key(3))
  jax.clear_caches()  # recompile: a resumed run re-creates theta_0 from scratch
  second = lottery.rewind_target("init", model=TINY, key=jax.random.key(3))
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  random = lottery.rewind_target("random", model=TINY, key=jax.random.key(3))
  a = first["encoder_level1_0"]["attn"]["qkv"]["kernel"]
  b = random["encoder_level1_0"]["attn"]["qkv"]["kernel"]
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  assert np.std(np.asarray(b)) == pytest.approx(np.std(np.asarray(a)), rel=0.3)


def _alive(masks) -> int:
  return sum(int(np.sum(m)) for m in jax.tree.leaves(masks))


def test_one_shot_and_random_masks_keep_exactly_the_asked_survivors():
  rng = np.random.default_rng(0)
  params = {
      "conv": {
          "kernel": rng.normal(size=(3, 3, 4, 5)).astype(np.float32),
          "bias": np.zeros(5, np.float32),
      },
      "norm": {"scale": rng.normal(size=7).astype(np.float32)},
  }
  total = 3 * 3 * 4 * 5 + 7
  magnitudes = np.sort(
      np.abs(np.concatenate([params["conv"]["kernel"].ravel(), params["norm"]["scale"]]))
  )
  for alive in (1, 10, 99, 150, total):
    masks = lottery.one_shot_masks(params, alive)
    assert masks["conv"]["bias"] is None and _alive(masks) == alive
    kept = np.abs(
        np.concatenate(
            [
                params["conv"]["kernel"][masks["conv"]["kernel"]],
                params["norm"]["scale"][masks["norm"]["scale"]],
            ]
        )
    )
    np.testing.assert_array_equal(np.sort(kept), magnitudes[total - alive :])  # the largest
    masks = lottery.random_masks(masks_lib.dense_masks(params), alive, rng)
    assert masks["conv"]["bias"] is None and _alive(masks) == alive

"""The step's stacked layout: a lossless round trip, and the same outputs, gradients and steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL_KWARGS
from mirl_jax import lottery, masks as masks_lib, models, scan_layout, train_step as ts

# Runs of 3, 2 (decoder_level1_0 and refinement_0) and 1 blocks: a single block is not scanned.
KWARGS = dict(TINY_MODEL_KWARGS, num_blocks=(1, 3, 1, 1))
MODEL = models.PromptIR(**KWARGS)


@pytest.fixture(scope="module")
def ticket():
  params = jax.device_get(models.init_params(MODEL, jax.random.key(3)))
  masks = lottery.prune(params, masks_lib.dense_masks(params), 40.0)
  return jax.device_get(masks_lib.apply_masks(params, masks)), masks


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert list(got) == list(want)  # the key order, which checkpoints and reports follow
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=masks_lib.path_name(path))


def test_stacking_puts_each_run_under_its_key_and_unstacking_restores_every_block(ticket):
  params, masks = ticket
  stacked = scan_layout.stack(params, MODEL)
  assert {"encoder_level2", "decoder_level2", "decoder_level1+refinement"} <= set(stacked)
  assert {"encoder_level1_0", "latent_0"} <= set(stacked) and "latent" not in stacked
  assert "refinement_0" not in stacked
  assert not any(name.startswith("encoder_level2_") for name in stacked)
  qkv = stacked["encoder_level2"]["attn"]["qkv"]["kernel"]
  assert qkv.shape == (3, *params["encoder_level2_0"]["attn"]["qkv"]["kernel"].shape)
  np.testing.assert_array_equal(qkv[2], params["encoder_level2_2"]["attn"]["qkv"]["kernel"])
  assert len(jax.tree.leaves(stacked)) < len(jax.tree.leaves(params))
  _assert_same(scan_layout.unstack(stacked, MODEL), params)

  # The masks' unprunable leaves (None) stay None through both ways.
  stacked_masks = scan_layout.stack(masks, MODEL)
  assert stacked_masks["encoder_level2"]["attn"]["temperature"] is None
  assert stacked_masks["encoder_level2"]["attn"]["qkv"]["kernel"].dtype == bool
  back = scan_layout.unstack(stacked_masks, MODEL)
  assert jax.tree.structure(back, is_leaf=lambda x: x is None) == jax.tree.structure(
      masks, is_leaf=lambda x: x is None
  )
  _assert_same(back, masks)


def test_the_network_computes_the_same_outputs_and_gradients_on_either_layout(ticket):
  params, _ = ticket
  stacked = scan_layout.stack(params, MODEL)
  x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 3), np.float32))
  loss = lambda p: jnp.mean(jnp.abs(MODEL.apply({"params": p}, x) - x))
  (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss))(p) for p in (params, stacked))
  assert abs(float(a) - float(b)) <= 1e-6
  gb = scan_layout.unstack(jax.device_get(gb), MODEL)
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(ga), jax.tree.leaves(gb)):
    err = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    assert err <= 1e-5 * float(np.abs(want).max()) + 1e-9, masks_lib.path_name(path)


@pytest.mark.slow
def test_a_masked_adamw_step_is_the_same_on_either_layout(ticket):
  params, masks = ticket
  mesh = ts.make_mesh(jax.devices()[:1])
  tx = ts.make_optimizer(1e-2)
  step = ts.make_train_step(mesh)
  rng = np.random.default_rng(1)
  batches = [(rng.random((2, 16, 16, 3), np.float32),) * 2 for _ in range(2)]
  batches = [(noisy + 0.1 * rng.standard_normal(noisy.shape, np.float32), clean)
             for noisy, clean in batches]  # fmt: skip

  def train(stack):
    state = ts.create_train_state(MODEL, params, tx)
    state, m = jax.device_get(state), masks
    if stack:
      state, m = scan_layout.stack_state(state, MODEL), scan_layout.stack(masks, MODEL)
    state = ts.run_steps(
        step, mesh, ts.replicate(mesh, state), ts.replicate(mesh, m), batches, round_index=1
    )
    state = jax.device_get(state)
    return scan_layout.unstack_state(state, MODEL) if stack else state

  per_block, stacked = train(False), train(True)
  assert jax.tree.structure(stacked) == jax.tree.structure(per_block)  # moments unstacked too
  for (path, want), got in zip(
      jax.tree_util.tree_leaves_with_path(per_block), jax.tree.leaves(stacked)
  ):
    want, got = np.asarray(want), np.asarray(got)
    scale = float(np.abs(want).max()) if want.size else 0.0
    assert float(np.abs(got - want).max(initial=0)) <= 1e-5 * scale + 1e-8, path
  is_none = lambda x: x is None
  for (path, p), m in zip(
      jax.tree_util.tree_leaves_with_path(stacked.params), jax.tree.leaves(masks, is_leaf=is_none)
  ):  # still a ticket
    if m is not None:
      assert not np.any(np.asarray(p)[~m]), masks_lib.path_name(path)


def test_a_tree_missing_a_block_is_refused_by_name(ticket):
  params, _ = ticket
  broken = {k: v for k, v in params.items() if k != "encoder_level2_1"}
  with pytest.raises(ValueError, match="encoder_level2.*encoder_level2_1"):
    scan_layout.stack(broken, MODEL)


def test_without_scan_blocks_the_layout_is_the_per_block_one(ticket):
  params, _ = ticket
  unrolled = models.PromptIR(**dict(KWARGS, scan_blocks=False))
  _assert_same(scan_layout.stack(params, unrolled), params)

"""The training step: masking invariant, AdamW as torch's, NaN stop, data parallelism."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirl_jax import lottery, masks as masks_lib, train_step as ts


class Net(nn.Module):
  """Conv kernels, a LayerNorm and a never-pruned temperature: compiles in a second."""

  @nn.compact
  def __call__(self, x):
    t = self.param("temperature", nn.initializers.ones, (1,))
    h = nn.Conv(8, (3, 3), use_bias=False, name="conv1")(x)
    h = nn.gelu(nn.LayerNorm(name="norm")(h)) * t
    return nn.Conv(3, (3, 3), name="conv2")(h) + x


def _fake_init(rng, path, shape):
  """PyTorch-like scales, drawn in numpy (no init to compile)."""
  leaf = masks_lib.path_name(path).rsplit("/", 1)[-1]
  if leaf in ("scale", "temperature"):
    return np.ones(shape, np.float32)
  bound = 1 / np.sqrt(np.prod(shape[:-1])) if leaf == "kernel" else 0.1
  return rng.uniform(-bound, bound, shape).astype(np.float32)


def _setup(model, seed=0, batch=8, size=16, percent=50.0):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  )["params"]
  params = jax.tree_util.tree_map_with_path(lambda p, s: _fake_init(rng, p, s.shape), shapes)
  masks = lottery.prune(params, masks_lib.dense_masks(params), percent)
  params = masks_lib.apply_masks(params, masks)
  x = rng.random((batch, size, size, 3), np.float32)
  y = rng.random((batch, size, size, 3), np.float32)
  return params, masks, x, y


def _train(model, params, masks, batches, devices, lr=1e-2, weight_decay=0.5, microbatches=1):
  mesh = ts.make_mesh(devices)
  state = ts.replicate(
      mesh, ts.create_train_state(model, params, ts.make_optimizer(lr, weight_decay=weight_decay))
  )
  step = ts.make_train_step(mesh, microbatches=microbatches)
  return ts.run_steps(step, mesh, state, ts.replicate(mesh, masks), batches, round_index=1)


def _assert_pruned_are_zero_and_survivors_moved(before, after, masks):
  moved = 0
  for path_p, a, m in zip(
      jax.tree_util.tree_flatten_with_path(before)[0],
      jax.tree.leaves(after),
      jax.tree.leaves(masks, is_leaf=lambda x: x is None),
  ):
    (path, b), a = path_p, np.asarray(a)
    if m is not None:
      m = np.asarray(m)
      assert np.all(a[~m] == 0), f"pruned weights of {masks_lib.path_name(path)} moved"
      moved += int(np.sum(a[m] != np.asarray(b)[m]))
  assert moved > 0


def test_pruned_weights_stay_exactly_zero():
  model = Net()
  params, masks, x, y = _setup(model)
  state = _train(model, params, masks, [(x, y)] * 4, jax.devices()[:1])
  assert int(state.step) == 4
  _assert_pruned_are_zero_and_survivors_moved(params, state.params, masks)


def test_microbatches_give_the_same_update():
  model = Net()
  params, masks, x, y = _setup(model)
  whole = _train(model, params, masks, [(x, y)] * 2, jax.devices()[:1])
  split = _train(model, params, masks, [(x, y)] * 2, jax.devices()[:1], microbatches=4)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(split.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match="microbatches=3"):
    _train(model, params, masks, [(x, y)], jax.devices()[:1], microbatches=3)


def test_adamw_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 4)).astype(np.float32)
  grads = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3)]
  w = torch.tensor(w0, requires_grad=True)
  opt = torch.optim.AdamW([w], lr=1e-2)  # torch defaults: the reference's optimizer
  tx = ts.make_optimizer(1e-2)
  p, opt_state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
  for g in grads:
    w.grad = torch.tensor(g)
    opt.step()
    updates, opt_state = tx.update(jnp.asarray(g), opt_state, p)
    p = p + updates
  np.testing.assert_allclose(np.asarray(p), w.detach().numpy(), rtol=0, atol=1e-6)


def test_clipping_matches_torch_clip_grad_norm_then_adamw():
  """train.clip_grad_norm: the steps above the norm are scaled down to it, the others kept."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(5, 4)).astype(np.float32)
  grads = [scale * rng.normal(size=(5, 4)).astype(np.float32) for scale in (10.0, 0.1, 3.0)]
  w = torch.tensor(w0, requires_grad=True)
  opt = torch.optim.AdamW([w], lr=1e-2)
  clipped, plain = ts.make_optimizer(1e-2, clip_grad_norm=1.0), ts.make_optimizer(1e-2)
  p, state = jnp.asarray(w0), clipped.init(jnp.asarray(w0))
  q, plain_state = p, plain.init(p)
  for g in grads:
    w.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([w], max_norm=1.0)
    opt.step()
    updates, state = clipped.update(jnp.asarray(g), state, p)
    p = p + updates
    updates, plain_state = plain.update(jnp.asarray(g), plain_state, q)
    q = q + updates
  np.testing.assert_allclose(np.asarray(p), w.detach().numpy(), rtol=0, atol=1e-5)
  assert np.abs(np.asarray(p) - np.asarray(q)).max() > 1e-3  # the clipping changed the steps


def test_global_norm_is_the_l2_norm_over_every_leaf():
  """The step's grad_norm: the norm of all grads as one vector (what torch's
  clip_grad_norm_ returns), an emptied tensor and a bfloat16 one included; a NaN
  anywhere makes it NaN, which is how a diverged step is caught."""
  rng = np.random.default_rng(0)
  tree = {
      "a": {
          "kernel": rng.normal(size=(3, 3, 1, 7)).astype(np.float32),
          "bias": np.zeros(7, np.float32),
      },
      "b": rng.normal(size=(5, 4)).astype(jnp.bfloat16),
      "t": np.float32(2.5),
  }
  expected = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
  got = jax.jit(ts.global_norm)(tree)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  tree["a"]["bias"][3] = np.nan
  assert np.isnan(float(jax.jit(ts.global_norm)(tree)))


def test_global_norm_with_masks_counts_only_the_kept_entries():
  """A pruned round's grad_norm: the norm of the masked grads, as the step
  applies them; a NaN at a pruned entry is not in it, one at a kept entry is."""
  rng = np.random.default_rng(1)
  tree = {
      "w": rng.normal(size=(3, 3, 2, 5)).astype(np.float32),
      "bias": rng.normal(size=5).astype(np.float32),
      "v": rng.normal(size=(4, 6)).astype(np.float32),
  }
  masks = {"w": rng.random((3, 3, 2, 5)) < 0.5, "bias": None, "v": np.zeros((4, 6), bool)}
  masks["v"][1, 2] = True
  norm = jax.jit(ts.global_norm)
  expected = norm(masks_lib.apply_masks(tree, masks))
  np.testing.assert_allclose(float(norm(tree, masks)), float(expected), rtol=1e-6)
  assert float(norm(tree, masks)) < float(norm(tree)) * 0.9
  tree["v"][0, 0] = np.nan  # pruned
  np.testing.assert_allclose(float(norm(tree, masks)), float(expected), rtol=1e-6)
  tree["v"][1, 2] = np.nan  # kept
  assert np.isnan(float(norm(tree, masks)))


@pytest.mark.parametrize("bad_step", [1, 3])
def test_non_finite_loss_names_round_and_step(bad_step):
  model = Net()
  params, masks, x, y = _setup(model)
  batches = [(x, y)] * 4
  batches[bad_step] = (np.full_like(x, np.nan), y)
  with pytest.raises(ts.NonFiniteError, match=f"round 1 at step {bad_step}:") as info:
    _train(model, params, masks, batches, jax.devices()[:1])
  assert (info.value.round_index, info.value.step) == (1, bad_step)


def test_four_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300, check=False
  )
  assert out.returncode == 0, out.stderr[-3000:]
  diff = float(out.stdout.strip().splitlines()[-1])
  assert diff <= 1e-5


def _four_vs_one() -> float:
  """Max |param difference| after 3 steps on 4 devices vs 1, same global batches."""
  assert jax.device_count() == 4, jax.devices()
  model = Net()
  params, masks, x, y = _setup(model, batch=8)
  rng = np.random.default_rng(1)
  batches = [(x, y)] + [
      (rng.random(x.shape, np.float32), rng.random(y.shape, np.float32)) for _ in range(2)
  ]
  four = _train(model, params, masks, batches, jax.devices())
  one = _train(model, params, masks, batches, jax.devices()[:1])
  _assert_pruned_are_zero_and_survivors_moved(params, four.params, masks)
  return max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params))
  )


if __name__ == "__main__":
  print(_four_vs_one())

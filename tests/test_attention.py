"""MDTA's core equals PyTorch's and autodiff's: values and gradients, emptied channels too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirl_jax import attention


def _autodiff_form(q, k, v, temperature, eps=1e-12):
  """F.normalize over the pixels, the product, the temperature, the softmax: for autodiff."""
  norm = lambda x: jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), eps * eps))
  cos = jnp.einsum("bnhc,bnhd->bhcd", q / norm(q), k / norm(k), precision="highest")
  probs = jax.nn.softmax(cos * temperature[:, None, None], axis=-1)
  return jnp.einsum("bhcd,bnhd->bnhc", probs, v, precision="highest")


def _inputs(emptied: bool):
  """q, k, v of shape (2, 30, 2, 4) and a temperature per head; if `emptied`, a q channel
  and a k channel of one head are all zero (pruned) and another k channel is below eps."""
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, 30, 2, 4)).astype(np.float32) for _ in "qkv")
  if emptied:
    q[:, :, 0, 1] = 0
    k[:, :, 0, 2] = 0  # the same head: eps * eps would divide their product
    k[0, :, 1, 3] *= 1e-14
  temperature = np.asarray([0.6, 1.7], np.float32)
  return q, k, v, temperature


def _loss(f, weights):
  return lambda *args: jnp.sum(jnp.tanh(f(*args)) * weights)


def _relative(a, b):
  return float(jnp.abs(a - b).max() / jnp.maximum(jnp.abs(b).max(), 1e-30))


def _relative_per_channel(a, b):
  """The largest relative error of any one channel: an emptied channel's gradient is 1/eps
  times the others' (F.normalize's at zero) and would hide theirs in a global maximum."""
  if a.ndim < 4:
    return _relative(a, b)
  err = jnp.abs(a - b).max(axis=(0, 1)) / jnp.maximum(jnp.abs(b).max(axis=(0, 1)), 1e-30)
  return float(err.max())


@pytest.mark.parametrize("emptied", [False, True])
def test_gradients_equal_autodiffs(emptied):
  args = [jnp.asarray(a) for a in _inputs(emptied)]
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(args[0].shape), jnp.float32)
  out = attention.channel_attention(*args)
  assert _relative(out, _autodiff_form(*args)) <= 1e-5
  ours = jax.grad(_loss(attention.channel_attention, weights), argnums=(0, 1, 2, 3))(*args)
  auto = jax.grad(_loss(_autodiff_form, weights), argnums=(0, 1, 2, 3))(*args)
  for name, got, want in zip("q k v temperature".split(), ours, auto):
    assert _relative_per_channel(got, want) <= 1e-5, name
    assert bool(jnp.all(jnp.isfinite(got))), name


def test_values_and_gradients_equal_pytorchs_at_emptied_channels():
  torch = pytest.importorskip("torch")
  q, k, v, temperature = _inputs(emptied=True)
  weights = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)
  value, grads = jax.value_and_grad(
      _loss(attention.channel_attention, jnp.asarray(weights)), argnums=(0, 1, 2, 3)
  )(*(jnp.asarray(a) for a in (q, k, v, temperature)))
  tq, tk, tv, tt = (torch.tensor(a, requires_grad=True) for a in (q, k, v, temperature))
  normalize = lambda t: torch.nn.functional.normalize(t, dim=1, eps=1e-12)
  t_cos = torch.einsum("bnhc,bnhd->bhcd", normalize(tq), normalize(tk))
  t_probs = torch.softmax(t_cos * tt[:, None, None], dim=-1)
  t_out = torch.einsum("bhcd,bnhd->bnhc", t_probs, tv)
  t_value = (torch.tanh(t_out) * torch.tensor(weights)).sum()
  t_value.backward()
  np.testing.assert_allclose(value, t_value.item(), rtol=1e-5)
  for grad, t in zip(grads, (tq, tk, tv, tt)):
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-6 * np.abs(grad).max())


def test_bfloat16_inputs_give_bfloat16_outputs_near_float32():
  q, k, v, temperature = (jnp.asarray(a) for a in _inputs(emptied=False))
  half = [a.astype(jnp.bfloat16) for a in (q, k, v)]
  out = attention.channel_attention(*half, temperature)
  assert out.dtype == jnp.bfloat16
  assert (
      _relative(out.astype(jnp.float32), attention.channel_attention(q, k, v, temperature)) < 2e-2
  )
  grads = jax.grad(
      lambda *a: jnp.sum(attention.channel_attention(*a).astype(jnp.float32)), argnums=(0, 1, 2, 3)
  )(*half, temperature)
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3 + [jnp.float32]

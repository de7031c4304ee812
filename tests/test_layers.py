"""The fast convolutions equal the plain ones: values, and gradients with a hand-written VJP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirl_jax import layers

# The reference form, PyTorch's groups=C conv: one grouped 3x3 convolution, padding 1.
_grouped_conv = layers.grouped_depthwise3x3


def _autodiff_form(x, kernel):
  """The same shifted products, left to autodiff."""
  return layers._shifted_sum(layers._pad(x), kernel, *x.shape[1:3])  # pylint: disable=protected-access


def _inputs(seed=0, shape=(2, 9, 7, 5)):
  rng = np.random.default_rng(seed)
  return (
      jnp.asarray(rng.standard_normal(shape), jnp.float32),
      jnp.asarray(rng.standard_normal((3, 3, shape[-1])), jnp.float32),
  )


def _relative(a, b):
  return float(jnp.abs(a - b).max() / jnp.maximum(jnp.abs(b).max(), 1e-30))


def test_depthwise_equals_pytorchs_grouped_conv():
  x, kernel = _inputs()
  np.testing.assert_allclose(layers.depthwise3x3(x, kernel), _grouped_conv(x, kernel), atol=1e-5)


def test_exports_trace_the_depthwise_conv_as_one_grouped_conv_with_the_same_values():
  x, _ = _inputs(4)
  module = layers.Depthwise3x3(5)
  params = module.init(jax.random.key(0), x)["params"]
  with layers.portable_forms():
    portable = module.apply({"params": params}, x)
    ops = str(jax.make_jaxpr(lambda x: module.apply({"params": params}, x))(x))
  assert ops.count("conv_general_dilated") == 1 and "feature_group_count=5" in ops
  np.testing.assert_allclose(portable, module.apply({"params": params}, x), atol=1e-5)
  outside = str(jax.make_jaxpr(lambda x: module.apply({"params": params}, x))(x))
  assert "conv_general_dilated" not in outside  # training keeps the shifted products


@pytest.mark.parametrize("emptied", [False, True])
def test_depthwise_gradients_equal_autodiffs(emptied):
  x, kernel = _inputs(1)
  if emptied:  # a channel pruned to nothing: its kernel and its input are all zero
    kernel = kernel.at[:, :, 2].set(0.0)
    x = x.at[..., 2].set(0.0)
  weights = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape), jnp.float32)
  loss = lambda f: lambda x, k: jnp.sum(jnp.tanh(f(x, k)) * weights)
  ours = jax.grad(loss(layers.depthwise3x3), argnums=(0, 1))(x, kernel)
  auto = jax.grad(loss(_autodiff_form), argnums=(0, 1))(x, kernel)
  for got, want in zip(ours, auto):
    assert _relative(got, want) <= 1e-5
  if emptied:
    assert np.all(np.isfinite(ours[0])) and np.all(np.isfinite(ours[1]))


def test_depthwise_module_keeps_nn_conv_kernel_layout_and_computes_in_its_dtype():
  x, _ = _inputs(3)
  module = layers.Depthwise3x3(5)
  params = module.init(jax.random.key(0), x)["params"]
  assert params["kernel"].shape == (3, 3, 1, 5) and params["kernel"].dtype == jnp.float32
  grouped = nn.Conv(
      5,
      (3, 3),
      padding=((1, 1), (1, 1)),
      feature_group_count=5,
      use_bias=False,
      precision="highest",
  )
  np.testing.assert_allclose(
      module.apply({"params": params}, x), grouped.apply({"params": params}, x), atol=1e-5
  )
  out = layers.Depthwise3x3(5, dtype=jnp.bfloat16).apply({"params": params}, x)
  assert out.dtype == jnp.bfloat16
  grads = jax.grad(
      lambda p: layers.Depthwise3x3(5, dtype=jnp.bfloat16)
      .apply({"params": p}, x)
      .astype(jnp.float32)
      .sum()
  )(params)
  assert grads["kernel"].dtype == jnp.float32


def test_pointwise_equals_a_1x1_nn_conv():
  x, _ = _inputs(4, (2, 6, 4, 7))
  module = layers.Pointwise(3)
  params = module.init(jax.random.key(0), x)["params"]
  assert params["kernel"].shape == (1, 1, 7, 3)
  conv = nn.Conv(3, (1, 1), use_bias=False, precision="highest")
  np.testing.assert_allclose(
      module.apply({"params": params}, x), conv.apply({"params": params}, x), atol=1e-6
  )
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x) ** 2))(params)
  assert _relative(grad(module)["kernel"], grad(conv)["kernel"]) <= 1e-5


@pytest.mark.parametrize("features,emptied", [(11, False), (3, False), (11, True)])
def test_pointwise_gradients_equal_autodiffs(features, emptied):
  """Both ways of contracting the pixels (the narrower operand transposed), and a pruned
  input channel and output feature."""
  x, _ = _inputs(5, (2, 6, 4, 7))
  kernel = jnp.asarray(np.random.default_rng(6).standard_normal((7, features)), jnp.float32)
  if emptied:
    x, kernel = x.at[..., 1].set(0.0), kernel.at[:, 2].set(0.0).at[1].set(0.0)
  weights = jnp.asarray(np.random.default_rng(7).standard_normal((2, 6, 4, features)), jnp.float32)
  loss = lambda f: lambda x, k: jnp.sum(jnp.tanh(f(x, k)) * weights)
  ours = jax.grad(loss(layers.pointwise), argnums=(0, 1))(x, kernel)
  auto = jax.grad(loss(lambda x, k: jnp.dot(x, k, precision="highest")), argnums=(0, 1))(x, kernel)
  for got, want in zip(ours, auto):
    assert got.shape == want.shape and _relative(got, want) <= 1e-5


def test_pointwise_in_bfloat16_returns_float32_kernel_gradients():
  x, _ = _inputs(8, (2, 4, 4, 6))
  params = layers.Pointwise(5).init(jax.random.key(0), x)["params"]
  grads = jax.grad(
      lambda p: layers.Pointwise(5, dtype=jnp.bfloat16)
      .apply({"params": p}, x)
      .astype(jnp.float32)
      .sum()
  )(params)
  assert grads["kernel"].dtype == jnp.float32
  want = jnp.broadcast_to(x.reshape(-1, 6).sum(0)[:, None], (6, 5))
  assert _relative(grads["kernel"][0, 0], want) <= 2e-2  # bf16 inputs


def test_gelu_is_pytorchs_exact_gelu():
  torch = pytest.importorskip("torch")
  x = np.linspace(-9, 9, 1001, dtype=np.float32)
  value, grad = jax.vmap(jax.value_and_grad(layers.gelu))(jnp.asarray(x))
  tx = torch.tensor(x, requires_grad=True)
  t_value = torch.nn.functional.gelu(tx)  # approximate="none": the erf form
  t_value.sum().backward()
  np.testing.assert_allclose(value, t_value.detach().numpy(), atol=1e-6)
  np.testing.assert_allclose(grad, tx.grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("emptied", [False, True])
def test_layer_norm_equals_flaxs_in_value_and_gradients(emptied):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 5, 3, 12)) * 0.3 + 0.2, jnp.float32)
  scale = jnp.asarray(rng.standard_normal(12), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(12), jnp.float32)
  if emptied:  # pruned scales, and a pixel whose channels are all equal (variance 0)
    scale = scale.at[3:5].set(0.0)
    x = x.at[0, 1, 2].set(0.7)
  flax_ln = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)
  plain = lambda x, s, b: flax_ln.apply({"params": {"scale": s, "bias": b}}, x)
  assert _relative(layers.layer_norm(x, scale, bias), plain(x, scale, bias)) <= 1e-6
  weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  loss = lambda f: lambda *a: jnp.sum(jnp.tanh(f(*a)) * weights)
  ours = jax.grad(loss(layers.layer_norm), argnums=(0, 1, 2))(x, scale, bias)
  auto = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
  for name, got, want in zip(("x", "scale", "bias"), ours, auto):
    assert _relative(got, want) <= 1e-5, name


def test_layer_norm_module_keeps_flaxs_params_and_computes_in_its_dtype():
  x = jnp.ones((1, 2, 2, 6), jnp.float32)
  variables = layers.LayerNorm(dtype=jnp.bfloat16).init(jax.random.key(0), x)
  assert jax.tree.map(lambda p: (p.shape, p.dtype), variables["params"]) == jax.tree.map(
      lambda p: (p.shape, p.dtype), nn.LayerNorm().init(jax.random.key(0), x)["params"]
  )
  assert layers.LayerNorm(dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16

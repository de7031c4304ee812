"""PromptIR against the PyTorch reference and independent numpy pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, TINY_MODEL_KWARGS
from mirl_jax import masks as masks_lib
from mirl_jax import models

# bfloat16 keeps 8 bits of mantissa (relative steps of 2**-8 = 0.4%): measured against the
# float32 reference, the full network's error is 0.0032 on average and 0.02 at most.
BF16_MEAN_ERROR, BF16_MAX_ERROR = 2**-7, 0.05

# The tiny network made wider for the tests of its init and shapes: several heads per
# level and after the prompts, unequal prompt dims and sizes, and kernels of >= 200
# weights, whose init statistics _check_pytorch_init tests.
MULTI_HEAD = dict(
    TINY_MODEL_KWARGS,
    dim=8,
    heads=(1, 2, 2, 2),
    prompt_dims=(8, 8, 16),
    prompt_sizes=(8, 4, 2),
    noise_level_heads=2,
)


def test_reference_outputs_through_jit(reference, reference_ticket):
  params, _ = reference_ticket
  forward = jax.jit(lambda p, x: models.PromptIR().apply({"params": p}, x))
  for i in (0, 1):  # prompts resized down (0) and up by non-integer factors (1)
    x = reference[f"input_{i}"].transpose(0, 2, 3, 1)
    want = reference[f"output_{i}"].transpose(0, 2, 3, 1)
    got = np.asarray(forward(params, x))
    assert np.abs(got - want).max() <= 2e-5, i


def test_default_parameter_counts():
  shapes = models.param_shapes(models.PromptIR())
  sizes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  assert sum(int(np.prod(s.shape)) for _, s in sizes) == 35_376_967
  assert sum(int(np.prod(s.shape)) for p, s in sizes if masks_lib.is_prunable(p)) == 32_983_768


def test_param_shapes_are_inferred_once_per_model_and_each_caller_owns_its_tree():
  first = models.param_shapes(models.PromptIR(**TINY_MODEL_KWARGS))
  want = jax.tree.map(lambda s: (s.shape, s.dtype), first)
  first.clear()  # a caller editing its tree
  again = models.param_shapes(models.PromptIR(**TINY_MODEL_KWARGS))  # an equal model: cached
  assert jax.tree.map(lambda s: (s.shape, s.dtype), again) == want
  listed = dict(TINY_MODEL_KWARGS, num_blocks=list(TINY_MODEL_KWARGS["num_blocks"]))
  assert (
      jax.tree.map(lambda s: (s.shape, s.dtype), models.param_shapes(models.PromptIR(**listed)))
      == want
  )


def _check_pytorch_init(params):
  """Bounds and shapes of PyTorch's init (kaiming_uniform a=sqrt(5) etc.)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name, leaf = masks_lib.path_name(path), np.asarray(leaf)
    parent = name.rsplit("/", 1)[0]
    if name.endswith("kernel"):
      bound = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
      assert np.abs(leaf).max() <= bound, name
      if leaf.size >= 200:  # uniform over the whole range, not normal
        assert np.abs(leaf).max() > 0.9 * bound, name
        assert abs(leaf.std() - bound / np.sqrt(3)) < 0.15 * bound, name
    elif name.endswith("linear_layer/bias"):
      kernel = params
      for part in parent.split("/"):
        kernel = kernel[part]
      assert np.abs(leaf).max() <= 1 / np.sqrt(kernel["kernel"].shape[0]), name
    elif name.endswith("prompt_param"):
      assert leaf.min() >= 0 and leaf.max() < 1 and leaf.std() > 0.2, name
    elif name.endswith(("scale", "temperature")):
      assert np.all(leaf == 1), name
    else:
      assert name.endswith("bias") and np.all(leaf == 0), name


def test_init_params_follows_pytorch_and_is_reproducible():
  model = models.PromptIR(**MULTI_HEAD)
  params = models.init_params(model, jax.random.key(3))
  _check_pytorch_init(params)
  again = models.init_params(model, jax.random.key(3))
  other = models.init_params(model, jax.random.key(4))
  leaves, again, other = (jax.tree.leaves(t) for t in (params, again, other))
  assert all(np.array_equal(a, b) for a, b in zip(leaves, again))
  assert not np.array_equal(leaves[-1], other[-1])
  shapes = jax.tree.map(lambda s: s.shape, models.param_shapes(model))
  assert jax.tree.map(np.shape, models.init_params(model, jax.random.key(0))) == shapes


@pytest.mark.parametrize(
    "sizes,chunk", [([3, 7], 4), ([5, 1000, 2], 64), ([1, 1, 1], 2), ([300], 1 << 22)]
)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_uniform_into_is_jax_random_uniform_bit_for_bit(sizes, chunk, impl):
  """Drawn in chunks, but the very values of one whole draw: rewinding to θ0 keeps working
  for runs whose tickets were drawn before (their init is re-created from the key)."""
  key = jax.random.key(11, impl=impl)
  arrays = [np.empty(n, np.float32) for n in sizes]
  models.uniform_into(key, arrays, chunk)
  whole = np.asarray(jax.random.uniform(key, (sum(sizes),)))
  assert np.array_equal(np.concatenate(arrays).view(np.uint32), whole.view(np.uint32))


def test_init_params_are_one_uniform_draw_split_in_path_order():
  model = models.PromptIR(**MULTI_HEAD)
  params = models.init_params(model, jax.random.key(5))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  drawn = [  # in path order, as drawn: kernels, prompts and the biases of layers with a kernel
      (p, v)
      for p, v in flat
      if p[-1].key in ("kernel", "prompt_param") or (p[-1].key == "bias" and np.any(v != 0))
  ]
  whole = np.asarray(jax.random.uniform(jax.random.key(5), (sum(v.size for _, v in drawn),)))
  offset = 0
  for path, value in drawn:
    part = whole[offset : offset + value.size].reshape(value.shape)
    offset += value.size
    if path[-1].key != "prompt_param":
      kernel = params
      for k in path[:-1]:
        kernel = kernel[k.key]
      bound = np.float32(np.prod(kernel["kernel"].shape[:-1]) ** -0.5)
      part = (2.0 * part - 1.0) * bound
    np.testing.assert_array_equal(value, part, err_msg=jax.tree_util.keystr(path))
  assert all(leaf.base is None for leaf in jax.tree.leaves(params))  # no view pins another


def test_module_initialisers_follow_pytorch():
  """Flax's own init (`PromptIR().init`) draws from the same distributions."""
  x = jnp.zeros((1, 16, 16, 16))
  for module in (
      models.TransformerBlock(16, 2, 2.66),
      models.PromptBlock(8, 5, 8, 16),
      models.conv(32, 3),
  ):
    _check_pytorch_init(jax.jit(module.init)(jax.random.key(0), x)["params"])


def test_pixel_unshuffle_matches_pytorch_channel_order():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 4, 3)).astype(np.float32)  # NHWC
  got = np.asarray(models.pixel_unshuffle(jnp.asarray(x)))
  want = np.zeros((2, 3, 2, 12), np.float32)
  for c in range(3):
    for i in range(2):
      for j in range(2):
        want[..., c * 4 + i * 2 + j] = x[:, i::2, j::2, c]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(models.pixel_shuffle(jnp.asarray(got))), x)


def test_layer_norm_is_per_pixel_with_eps_1e5():
  rng = np.random.default_rng(1)
  x = (rng.normal(size=(1, 3, 5, 16)) * 1e-3 + 0.5).astype(np.float32)
  ln = models.layer_norm()
  variables = ln.init(jax.random.key(0), x)
  got = np.asarray(ln.apply(variables, x))
  x64 = x.astype(np.float64)
  mean = x64.mean(-1, keepdims=True)
  var = ((x64 - mean) ** 2).mean(-1, keepdims=True)  # biased
  want = (x64 - mean) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(got, want, atol=2e-5)


def _torch_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """PyTorch's bilinear rule (align_corners=False), one (H, W) plane."""

  def axis(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo

  ly, hy, fy = axis(x.shape[0], out_h)
  lx, hx, fx = axis(x.shape[1], out_w)
  top = x[ly][:, lx] * (1 - fx) + x[ly][:, hx] * fx
  bottom = x[hy][:, lx] * (1 - fx) + x[hy][:, hx] * fx
  return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("out_hw", [(4, 6), (17, 25), (64, 96)])
def test_prompt_resize_is_pytorch_bilinear_without_antialiasing(out_hw):
  rng = np.random.default_rng(2)
  x = rng.random((1, 16, 16, 2)).astype(np.float32)
  got = np.asarray(models.resize_bilinear(jnp.asarray(x), *out_hw))
  for c in range(2):
    want = _torch_bilinear(x[0, :, :, c].astype(np.float64), *out_hw)
    np.testing.assert_allclose(got[0, :, :, c], want, atol=1e-6)


def test_tiny_variant_runs_and_rejects_bad_shapes():
  model = models.PromptIR(**MULTI_HEAD)
  x = jnp.full((2, 32, 24, 3), 0.5)
  params = models.init_params(model, jax.random.key(0))
  assert jax.jit(model.apply)({"params": params}, x).shape == x.shape
  with pytest.raises(ValueError, match="multiples of 8"):
    model.apply({"params": params}, jnp.zeros((1, 30, 24, 3)))


def test_a_channel_pruned_to_nothing_keeps_gradients_finite():
  model = TINY
  params = models.init_params(model, jax.random.key(0))
  params["encoder_level1_0"]["attn"]["qkv"]["kernel"][:] = 0  # q, k and v emptied (global
  # pruning empties whole small layers at high sparsity)
  x = jnp.asarray(np.random.default_rng(0).random((1, 16, 16, 3), np.float32))
  grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x) - x))))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_scanned_blocks_compute_what_unrolled_blocks_do():
  config = dict(TINY_MODEL_KWARGS, num_blocks=(2, 3, 1, 2))
  scanned = models.PromptIR(**config)
  unrolled = models.PromptIR(**dict(config, scan_blocks=False))
  params = models.init_params(scanned, jax.random.key(1))
  assert jax.tree.structure(params) == jax.tree.structure(
      models.init_params(unrolled, jax.random.key(1))
  )  # the same per-block names
  x = jnp.asarray(np.random.default_rng(1).random((2, 16, 24, 3), np.float32))

  def loss(model):
    return lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x) - x))

  (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in (scanned, unrolled))
  assert abs(float(a) - float(b)) <= 1e-6
  for got, want in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    assert float(jnp.abs(got - want).max()) <= 1e-5 * float(jnp.abs(want).max()) + 1e-9


@pytest.mark.parametrize("scan_blocks", [True, False])
def test_remat_changes_memory_not_gradients(scan_blocks):
  config = dict(TINY_MODEL_KWARGS, num_blocks=(2, 1, 1, 2), scan_blocks=scan_blocks)
  kept, rematted = models.PromptIR(**dict(config, remat="none")), models.PromptIR(**config)
  assert rematted.remat == "blocks"  # the tiny config's, as the default
  params = models.init_params(kept, jax.random.key(2))
  x = jnp.asarray(np.random.default_rng(2).random((2, 16, 16, 3), np.float32))

  def loss(model):
    return lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x) - x))

  (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in (kept, rematted))
  assert abs(float(a) - float(b)) <= 1e-6
  for got, want in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
    assert float(jnp.abs(got - want).max()) <= 1e-5 * float(jnp.abs(want).max()) + 1e-9
  with pytest.raises(ValueError, match="remat='all'"):
    models.PromptIR(remat="all")


def test_bfloat16_compute_stays_within_bfloat16_of_the_reference(reference, reference_ticket):
  params, _ = reference_ticket
  model = models.PromptIR(dtype="bfloat16")
  x = reference["input_0"].transpose(0, 2, 3, 1)
  want = reference["output_0"].transpose(0, 2, 3, 1)
  got = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
  assert got.dtype == jnp.float32  # mixed precision: the output stays float32
  error = np.abs(np.asarray(got) - want)
  print(f"bfloat16 against the float32 reference: max {error.max():.4f}, mean {error.mean():.5f}")
  assert error.mean() <= BF16_MEAN_ERROR and error.max() <= BF16_MAX_ERROR

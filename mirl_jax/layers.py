"""The network's commonest layers, in the forms XLA runs fast, PyTorch's results.

PromptIR spends most of a training step in 1x1 convolutions and 3x3 depthwise
convolutions. On XLA's CPU backend a 1x1 `nn.Conv` differentiates several
times slower than the same arithmetic as a matmul on the channel axis, and a
grouped (depthwise) conv runs far slower than nine shifted products, whose
autodiff is in turn slower than a backward written in the same shifted form
(the README's profile, benchmarks/profile_step.py). So: `Pointwise` is a
matmul, `Depthwise3x3` is shifted products, both with hand-written VJPs:
autodiff of the matmul lets XLA transpose the wide output gradient for the
kernel's gradient (and fuse that strided write into whatever produced it, the
depthwise backward: the slowest op of a step), where transposing the narrower
operand is enough. Both keep the parameter names and
layouts of `nn.Conv` ((1, 1, in, out) and (3, 3, 1, C) kernels) so checkpoints
and masks are unchanged, and both take the model's compute dtype and precision.

Runtimes other than XLA see it the other way round: in ONNX, nine shifted products are some
40 ops per convolution where one grouped `Conv` does, and onnxruntime runs the default network
twice as fast with the grouped form. Exports trace inside `portable_forms()` to get it.
"""

import contextlib
import contextvars
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's conv init.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _sums(terms: tuple, axis: int) -> tuple:
  """Each term summed over `axis`, all in one variadic reduction: one kernel, one pass."""
  zeros = tuple(jnp.zeros((), t.dtype) for t in terms)
  add = lambda a, b: tuple(u + v for u, v in zip(a, b))
  return jax.lax.reduce(terms, zeros, add, (axis,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x: jax.Array, kernel: jax.Array, precision: Any = "highest") -> jax.Array:
  """(..., C) @ (C, F): a 1x1 convolution of channels-last `x`."""
  return jnp.dot(x, kernel, precision=precision)


def _pointwise_fwd(x, kernel, precision):
  return pointwise(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, g):
  """The kernel's gradient contracts the pixels of x and g: the narrower of the two is
  transposed (or the product of the other way round, a small (F, C), is). In float32."""
  x, kernel = residuals
  dx = jnp.dot(g, kernel.T, precision=precision)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  if x2.shape[1] <= g2.shape[1]:
    dk = jnp.dot(x2.T, g2, precision=precision, preferred_element_type=jnp.float32)
  else:
    dk = jnp.dot(g2.T, x2, precision=precision, preferred_element_type=jnp.float32).T
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class Pointwise(nn.Module):
  """A bias-free 1x1 convolution as a matmul over the channel axis."""

  features: int
  dtype: Any = jnp.float32
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", torch_kernel_init, (1, 1, x.shape[-1], self.features))
    return pointwise(x.astype(self.dtype), kernel[0, 0].astype(self.dtype), self.precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Over the last axis, two-pass variance, statistics in float32; in x's dtype.

  Autodiff of the same steps compiles to about ten kernels per norm in the
  backward; this VJP to four (the two row means of the input gradient in one
  variadic reduction).
  """
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + eps)
  y = (x32 - mean) * rstd * scale + bias
  return y.astype(x.dtype), (x, mean, rstd, scale)


def _layer_norm_bwd(eps, residuals, g):
  del eps
  x, mean, rstd, scale = residuals
  g32 = g.astype(jnp.float32)
  normed = (x.astype(jnp.float32) - mean) * rstd
  gs = g32 * scale
  a, b = _sums((gs, gs * normed), axis=x.ndim - 1)
  n = x.shape[-1]
  dx = rstd * (gs - a[..., None] / n - normed * (b[..., None] / n))
  batch = tuple(range(x.ndim - 1))
  dscale, dbias = jnp.sum(g32 * normed, axis=batch), jnp.sum(g32, axis=batch)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm`'s params ("scale" ones, "bias" zeros, float32) with `layer_norm`'s VJP."""

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon)


def gelu(x: jax.Array) -> jax.Array:
  """PyTorch's exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as PyTorch writes it.

  `nn.gelu(approximate=False)` writes it with erfc, whose XLA expansion (an
  exp and two rational fits) costs twice erf's on a CPU; values differ by ~1e-7.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _shifted_sum(padded: jax.Array, kernel: jax.Array, h: int, w: int) -> jax.Array:
  """sum_ij padded[:, i:i+h, j:j+w] * kernel[i, j]: a 3x3 depthwise correlation."""
  out = padded[:, :h, :w] * kernel[0, 0]
  for i in range(3):
    for j in range(3):
      if i or j:
        out = out + padded[:, i : i + h, j : j + w] * kernel[i, j]
  return out


def _pad(x: jax.Array) -> jax.Array:
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


@jax.custom_vjp
def depthwise3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(B, H, W, C) * (3, 3, C) -> (B, H, W, C), zero padding 1: PyTorch's groups=C conv."""
  return _shifted_sum(_pad(x), kernel, *x.shape[1:3])


def _depthwise_fwd(x, kernel):
  return depthwise3x3(x, kernel), (x, kernel)


def _depthwise_bwd(residuals, g):
  """The input's gradient is the same correlation with the kernel flipped; the kernel's,
  nine reductions. Accumulated in float32 whatever the compute dtype.

  The nine sum over the rows together first (one variadic reduction) and then over
  batch and columns: three kernels instead of eighteen, so the default training step
  compiles about 4 s faster, and on the level-1 tensors it runs faster too. A single
  variadic reduction over all three axes sums sequentially, 25 times less accurately.
  """
  x, kernel = residuals
  h, w = x.shape[1:3]
  dx = _shifted_sum(_pad(g), kernel[::-1, ::-1], h, w)
  padded = _pad(x)
  products = tuple(
      (padded[:, i : i + h, j : j + w] * g).astype(jnp.float32) for i in range(3) for j in range(3)
  )
  dk = jnp.sum(jnp.stack(_sums(products, axis=1)), axis=(1, 2)).reshape(kernel.shape)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise3x3.defvjp(_depthwise_fwd, _depthwise_bwd)

_PORTABLE = contextvars.ContextVar("portable_forms", default=False)


@contextlib.contextmanager
def portable_forms():
  """Within it, `Depthwise3x3` traces as one grouped convolution (for exports; forward only)."""
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


def grouped_depthwise3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`depthwise3x3` as one convolution with a group per channel."""
  return jax.lax.conv_general_dilated(
      x,
      kernel[:, :, None, :],
      (1, 1),
      ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1],
      precision="highest",
  )


class Depthwise3x3(nn.Module):
  """3x3 depthwise convolution, kernel (3, 3, 1, C) as a grouped nn.Conv would hold it."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", torch_kernel_init, (3, 3, 1, self.features))
    apply = grouped_depthwise3x3 if _PORTABLE.get() else depthwise3x3
    return apply(x.astype(self.dtype), kernel[:, :, 0].astype(self.dtype))

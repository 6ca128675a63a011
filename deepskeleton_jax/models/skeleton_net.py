"""SkeletonMapNet: the paper's deconvolutional network (Section 3.2).

A ResNet-50 encoder (submodule `backbone`) followed by a decoder that starts
from res5c (stride 32) and repeats, for each skip connection res4f, res3d,
res2c:

  x = ResidualModule(Upsample2x(x))          # upsampling layer + residual module
  logits_k = Head(ResidualModule(x))         # the blob feeding the summation
                                             # branches off to a residual block,
                                             # intermediate supervision on it
  x = x + Projection1x1(skip)                # pixel-wise summation

and ends with a residual module and the final head at stride 4, i.e.
[B, 56, 56, 6] logits (foreground RGB, background RGB) for a 224x224 input.
Supervision heads therefore sit at strides 16, 8, 4 (intermediate) and 4
(final); all of them predict the 6 channels.

Upsampling layers are 4x4/2 transposed convolutions initialised to bilinear
upsampling (trainable). Residual modules are the pre-activation bottlenecks of
Stacked Hourglass (BN-ReLU-1x1 (D/2) - BN-ReLU-3x3 (D/2) - BN-ReLU-1x1 (D) +
identity), at decoder width D (`decoder_width`, 256 by default).
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.models import layers
from deepskeleton_jax.models import resnet

SKIPS = ('res4f', 'res3d', 'res2c')
# Stride of the final output relative to the input.
OUTPUT_STRIDE = 4


def bilinear_kernel_init(key: jax.Array, shape: Sequence[int],
                         dtype: Any = jnp.float32) -> jax.Array:
  """Initialiser of a [k, k, C, C] transposed-conv kernel to bilinear upsampling.

  The FCN/Caffe "bilinear" filler: channel c maps to channel c with the
  separable tent kernel of factor f = ceil(k / 2), other channel pairs are 0.
  With k = 4, stride 2 and PyTorch-style padding 1 this is exactly
  half-pixel-centre bilinear upsampling by 2 away from the borders.

  Args:
    key: unused (the initialisation is deterministic).
    shape: (k, k, in_channels, out_channels) with in_channels == out_channels.
    dtype: parameter dtype.

  Returns:
    The kernel.
  """
  del key
  k, k2, cin, cout = shape
  if k != k2 or cin != cout:
    raise ValueError('bilinear_kernel_init needs a square kernel and as many '
                     f'input as output channels, got shape {tuple(shape)}')
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 == 1 else factor - 0.5
  taps = 1.0 - np.abs(np.arange(k) - center) / factor
  kernel = np.zeros(shape, np.float32)
  kernel[:, :, np.arange(cin), np.arange(cin)] = np.outer(taps, taps)[..., None]
  return jnp.asarray(kernel, dtype)


class Upsample(nn.Module):
  """2x upsampling: 4x4/2 transposed conv (= torch's padding 1), bilinear init."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # lax.conv_transpose pads the dilated input by k - 1 - p = 2 on each side.
    return nn.ConvTranspose(self.features, (4, 4), strides=(2, 2),
                            padding=((2, 2), (2, 2)), use_bias=False,
                            kernel_init=bilinear_kernel_init, dtype=self.dtype,
                            param_dtype=jnp.float32, name='deconv')(x)


class Projection(nn.Module):
  """1x1 conv + BN mapping an encoder feature to the decoder width."""
  features: int
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = resnet.conv(self.dtype)(self.features, (1, 1), name='conv')(x)
    return resnet.batch_norm(self.train, self.dtype)(name='bn')(x)


class Head(nn.Module):
  """BN-ReLU-1x1 conv (with bias) to `features` float32 logits."""
  features: int
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(resnet.batch_norm(self.train, self.dtype)(name='bn')(x))
    x = nn.Conv(self.features, (1, 1), dtype=self.dtype,
                param_dtype=jnp.float32, name='conv')(x)
    return x.astype(jnp.float32)


class SkeletonMapNet(nn.Module):
  """ResNet encoder + upsampling decoder with skips and intermediate supervision.

  Attributes:
    stage_sizes: ResNet stage sizes ((3, 4, 6, 3) = ResNet-50).
    width: ResNet stem width (64 = ResNet-50).
    in_channels: image channels.
    decoder_width: channels of the decoder (256 in the full model).
    out_channels: channels of every head (6: foreground RGB, background RGB).
    dtype: computation dtype; parameters, statistics and logits are float32.
    remat: rematerialise the backbone's blocks.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  in_channels: int = 3
  decoder_width: int = 256
  out_channels: int = 6
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    """Predicts skeleton-map logits.

    Args:
      x: [B, S, S', in_channels] images, sides multiples of 32.
      train: batch statistics mode for every BatchNorm.

    Returns:
      Float32 logits of every supervision head, coarsest first:
      [B, S/16, S'/16, 6], [B, S/8, S'/8, 6], [B, S/4, S'/4, 6] (intermediate)
      and last the final [B, S/4, S'/4, 6] output.
    """
    features = resnet.ResNet(self.stage_sizes, self.width, self.in_channels,
                             self.dtype, self.remat, name='backbone')(x, train)
    d, kw = self.decoder_width, dict(train=train, dtype=self.dtype)
    residual = lambda name: layers.PreActBottleneck(
        d, self.dtype, use_bias=False, kernel_init=resnet.conv_init, name=name)
    y = Projection(d, **kw, name='proj_res5c')(features['res5c'])
    logits = []
    for skip in SKIPS:
      y = Upsample(d, self.dtype, name=f'up_{skip}')(y)
      y = residual(f'residual_{skip}')(y, train)
      side = residual(f'side_residual_{skip}')(y, train)
      logits.append(Head(self.out_channels, **kw, name=f'head_{skip}')(side))
      y = y + Projection(d, **kw, name=f'proj_{skip}')(features[skip])
    y = residual('final_residual')(y, train)
    logits.append(Head(self.out_channels, **kw, name='final_head')(y))
    b, h, w = x.shape[0], x.shape[1] // OUTPUT_STRIDE, x.shape[2] // OUTPUT_STRIDE
    chex.assert_shape(logits[-1], (b, h, w, self.out_channels))
    return logits


def area_resize(x: jax.Array, height: int, width: int) -> jax.Array:
  """Downsamples [B, H, W, C] by integer factors by averaging pixel blocks.

  Args:
    x: [B, H, W, C].
    height: output height; H must be a multiple of it.
    width: output width; W must be a multiple of it.

  Returns:
    [B, height, width, C].
  """
  b, h, w, c = x.shape
  if h % height or w % width:
    raise ValueError(f'cannot area-resize {(h, w)} to {(height, width)}: the '
                     'input size must be an integer multiple of the output size')
  x = x.reshape(b, height, h // height, width, w // width, c)
  return x.mean(axis=(2, 4))


LOSS_NORMALIZATIONS = ('caffe', 'mean')


def skeleton_map_loss(logits: Sequence[jax.Array], targets: jax.Array,
                      normalization: str = 'mean') -> jax.Array:
  """Sigmoid cross-entropy of every head against the rendered maps.

  Targets are area-averaged down to each head's resolution.

  Args:
    logits: list of [B, h_k, w_k, C] logits (as returned by SkeletonMapNet);
      each h_k, w_k must divide the target size.
    targets: [B, H, W, C] maps in [0, 1] (fg RGB, bg RGB), H, W = the final size.
    normalization: 'caffe': the paper's Caffe loss, one SigmoidCrossEntropyLoss
      layer (loss_weight 1) per head: the sum over the head's pixels and
      channels divided by the batch size B (Caffe's default normalisation of
      that layer, BATCH_SIZE), summed over the heads, so every pixel of every
      head weighs the same. 'mean': per head the mean over batch, pixels and
      channels, averaged over the heads (each head weighs the same, so a pixel
      of the 14x14 head weighs 16x one of the 56x56 head).

  Returns:
    Scalar loss.
  """
  if not logits:
    raise ValueError('logits must be a non-empty list of head outputs')
  if normalization not in LOSS_NORMALIZATIONS:
    raise ValueError(f'normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}')
  chex.assert_rank(targets, 4)
  targets = targets.astype(jnp.float32)
  losses = []
  for i, head in enumerate(logits):
    if head.ndim != 4 or head.shape[0] != targets.shape[0] or (
        head.shape[-1] != targets.shape[-1]):
      raise ValueError(f'logits[{i}] has shape {tuple(head.shape)}, expected '
                       f'[{targets.shape[0]}, h, w, {targets.shape[-1]}] to '
                       f'match targets {tuple(targets.shape)}')
    t = area_resize(targets, head.shape[1], head.shape[2])
    ce = sigmoid_cross_entropy(head.astype(jnp.float32), t)
    losses.append(jnp.sum(ce) / ce.shape[0] if normalization == 'caffe' else jnp.mean(ce))
  total = jnp.sum(jnp.stack(losses))
  return total if normalization == 'caffe' else total / len(losses)


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Element-wise sigmoid cross-entropy with soft targets, stable for any logit.

  Args:
    logits: any shape.
    targets: probabilities in [0, 1], the same shape.

  Returns:
    `-t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x))`, computed as
    `max(x, 0) - x t + log(1 + exp(-|x|))` (as Caffe's SigmoidCrossEntropyLoss).
  """
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))

"""Layers shared by the models: the pre-activation bottleneck residual module.

Newell et al.'s Stacked Hourglass "Residual" (BN-ReLU-1x1 conv to F/2,
BN-ReLU-3x3 to F/2, BN-ReLU-1x1 to F, plus the input, 1x1-projected when its
width is not F). The hourglass uses it as Newell did (biased convolutions,
LeCun-normal init); the SkeletonMapNet decoder's residual modules use it with
bias-free, He-initialised convolutions like its ResNet encoder.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepskeleton_jax.models import resnet


class PreActBottleneck(nn.Module):
  """Pre-activation bottleneck residual module with `features` outputs.

  Attributes:
    features: output channels F (the bottleneck has F / 2).
    dtype: computation dtype (parameters and BN statistics stay float32).
    use_bias: biased convolutions.
    kernel_init: convolution kernel initialiser.
  """
  features: int
  dtype: Any = jnp.float32
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = resnet.batch_norm(train, self.dtype)
    conv = lambda f, k, name: nn.Conv(f, (k, k), padding='SAME', use_bias=self.use_bias,
                                      dtype=self.dtype, param_dtype=jnp.float32,
                                      kernel_init=self.kernel_init, name=name)
    mid = max(self.features // 2, 1)
    y = conv(mid, 1, 'conv1')(nn.relu(norm(name='bn1')(x)))
    y = conv(mid, 3, 'conv2')(nn.relu(norm(name='bn2')(y)))
    y = conv(self.features, 1, 'conv3')(nn.relu(norm(name='bn3')(y)))
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, 'skip')(x)
    return x + y

"""DeepSkeleton-JAX: 3D human pose estimation through skeleton maps, in JAX/Flax.

The package follows the pipeline, one subpackage per stage:

  geometry/    skeleton (joints, bones), camera (projection, crops), rasterize
               (image -> skeleton-map targets)
  data/        the example format, dataset builders by path, the grain pipeline
  models/      ResNet-50, SkeletonMapNet, PoseRegressor, Stacked Hourglass,
               lifting MLP, stacked hypotheses
  training/    configs, stages, the sharded train step and loop, checkpoints
  evaluation/  metrics, matching, evaluation reports, prediction, figures

The public facade (as optax's): the contract modules are importable from here,
`from deepskeleton_jax import skeleton, camera, rasterize, metrics, matching`,
and the models from `deepskeleton_jax.models` (docs/DESIGN.md lists the API).
"""

from deepskeleton_jax.evaluation import matching
from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton

__version__ = '0.2.0'

__all__ = ('camera', 'matching', 'metrics', 'rasterize', 'skeleton')

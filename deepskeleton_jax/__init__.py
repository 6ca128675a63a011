"""DeepSkeleton-JAX: 3D human pose estimation through skeleton maps, in JAX/Flax.

The package follows the pipeline, one subpackage per stage:

  geometry/       skeleton (joints, bones), camera (projection, crops), rasterize
                  (image -> skeleton-map targets)
  data/           the example format, dataset builders by path, the grain pipeline
  models/         ResNet-50, SkeletonMapNet, PoseRegressor, Stacked Hourglass,
                  lifting MLP, stacked hypotheses
  experiment/     what training and serving share: configs, stage definitions,
                  checkpoints, the device mesh, the metrics log
  training/       the sharded train step and the resumable train loop
  inference/      serving a trained model: the jittable pipeline, matching,
                  prediction on images and videos, export
  evaluation/     scoring against labels: metrics, tables, report, detection files
  visualization/  drawing, figures, video overlays
  datasets/       the TFDS builders (the repository's datasets/ folder)
  configs/        the experiment configs (the repository's configs/ folder)
  cli.py          the command line (`python run.py`, `deepskeleton-jax`)

The public facade (as optax's): the contract modules are importable from here,
`from deepskeleton_jax import skeleton, camera, rasterize, metrics, matching`,
and the models from `deepskeleton_jax.models` (docs/DESIGN.md lists the API).
"""

from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import matching

__version__ = '0.2.0'

__all__ = ('camera', 'matching', 'metrics', 'rasterize', 'skeleton')

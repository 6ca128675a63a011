"""DeepSkeleton-JAX: 3D human pose estimation through skeleton maps, in JAX/Flax."""

__version__ = '0.1.0'

"""Flax linen models: ResNet-50, SkeletonMapNet, PoseRegressor, Stacked Hourglass, lifting MLP."""

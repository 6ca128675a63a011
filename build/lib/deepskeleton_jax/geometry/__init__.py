"""Geometry: the 16-joint skeleton, cameras and crops, the skeleton-map rasterizer."""

"""Benchmarks (outside the library): train/inference steps, the rasterizer vs OpenCV, the input pipeline."""

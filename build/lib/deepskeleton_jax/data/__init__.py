"""Data: the example format every builder writes, builders by path, the grain input pipeline."""

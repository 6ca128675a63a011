"""Serving trained models: the jittable pipeline, matching, prediction on images and videos, export."""

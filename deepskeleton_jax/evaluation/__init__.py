"""Evaluation: metrics, hypothesis matching, report tables, evaluation, prediction, figures."""

"""Evaluation against labels: metrics, scoring, paper tables, the report, detection files, pseudo-3D."""

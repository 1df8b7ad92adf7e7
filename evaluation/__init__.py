"""Evaluation: feature networks and sample-quality metrics that work offline."""

"""Evaluation: metrics (torch-free), generation, exposure bias, calibration, the LLM judge, the evaluation run."""

"""Deterministic MLflow ResponsesAgent demo agents (models-from-code files)."""

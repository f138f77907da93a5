"""Quantization: arithmetic, calibration, QDQ planning, accuracy recovery, error analysis."""

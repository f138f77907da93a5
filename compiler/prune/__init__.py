"""Structured channel pruning on the IR: which channels are coupled (`channels`), which to
remove (`select`), removing them (`rewrite`), and recovering accuracy without training
(`gram`, `refit`: least-squares re-fit of the consumer layers on calibration data)."""

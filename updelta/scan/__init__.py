"""Pairing, plan, executors and the scan engine: checkpoints in, per-tensor records out."""

"""Latency profiling: prefill and per-token decode for every mask, merged or not."""

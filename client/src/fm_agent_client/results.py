"""What one control step returns, decoded from ``ActResponse`` into numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .v1 import policy_pb2 as pb


@dataclass
class ActResult:
    actions: np.ndarray  # (chunk, dims) float32 or (chunk,) int64
    step: int
    latency: dict[str, float]
    response: pb.ActResponse

    @classmethod
    def from_response(cls, response: pb.ActResponse) -> ActResult:
        actions: np.ndarray
        if response.discrete_actions:
            actions = np.asarray(response.discrete_actions, dtype=np.int64)
        else:
            actions = np.asarray(response.actions, dtype=np.float32).reshape(response.chunk, response.dims)
        lat = response.latency
        latency = {
            "queue_ms": lat.queue_ms,
            "preprocess_ms": lat.preprocess_ms,
            "prefill_ms": lat.prefill_ms,
            "decode_ms": lat.decode_ms,
            "server_ms": lat.server_ms,
            "batch_size": lat.batch_size,
        }
        return cls(actions, response.step, latency, response)

"""Errors that carry the gRPC status the client should see, and the server's own faults.

A client's mistake gets a message saying what is wrong. The server's own faults never leak their
text (allocator messages, tensor shapes, paths) to a client: the client gets ``INTERNAL`` and a
short error id, the log gets the id with the traceback, and a flood of failures cannot flood the
log, because tracebacks are rate-limited and the rest are counted.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time

import grpc


class RequestError(Exception):
    """A request the server refuses; ``code`` is the gRPC status, the message says what is wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class ErrorReporter:
    """Turns unexpected exceptions into opaque ``INTERNAL`` errors and rate-limited log lines.

    At most ``burst`` tracebacks are logged per ``window_s``; beyond that only the id is kept and
    the next logged line says how many were suppressed.
    """

    def __init__(self, log: logging.Logger, burst: int = 10, window_s: float = 60.0) -> None:
        self.log, self.burst, self.window_s = log, burst, window_s
        self._window_start, self._logged, self.suppressed, self.count = time.monotonic(), 0, 0, 0
        self._lock = threading.Lock()

    def internal(self, error: BaseException, where: str) -> RequestError:
        error_id = secrets.token_hex(4)
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now - self._window_start > self.window_s:
                self._window_start, self._logged = now, 0
            loud = self._logged < self.burst
            suppressed = self.suppressed if loud else 0
            if loud:
                self._logged, self.suppressed = self._logged + 1, 0
            else:
                self.suppressed += 1
        if loud:
            self.log.error(
                json.dumps(
                    {
                        "event": "internal_error",
                        "error_id": error_id,
                        "where": where,
                        "type": type(error).__name__,
                        "suppressed_before": suppressed,
                    }
                ),
                exc_info=(type(error), error, error.__traceback__),
            )
        return RequestError(
            grpc.StatusCode.INTERNAL,
            f"internal server error (error id {error_id}); the operator can find it in the server log",
        )

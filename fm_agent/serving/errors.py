"""Errors that carry the gRPC status the client should see."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses; ``code`` is the gRPC status, the message says what is wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)

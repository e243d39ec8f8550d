"""Server reflection under both names clients ask for: ``grpc.reflection.v1`` and ``v1alpha``.

The pinned grpcio-reflection implements only v1alpha. v1's messages are v1alpha's field for field
(same numbers, same types), so the v1 service re-encodes each message and lets grpcio-reflection's
own servicer answer; ``reflection_v1.proto`` puts v1's descriptors in the pool so that tools which
describe the reflection service itself find it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc_reflection.v1alpha import reflection as reflection_v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

from ..v1 import reflection_v1_pb2 as v1_pb2

V1_SERVICE_NAME = v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1ALPHA_SERVICE_NAME = reflection_v1alpha.SERVICE_NAME


def enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Reflection v1 and v1alpha for ``service_names`` (the reflection services are listed too)."""
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    alpha = reflection_v1alpha.aio.ReflectionServicer(names)  # the asyncio servicer, as on a grpc.aio server

    async def info_v1(requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        async def as_alpha() -> AsyncIterator[alpha_pb2.ServerReflectionRequest]:
            async for raw in requests:
                yield alpha_pb2.ServerReflectionRequest.FromString(raw)

        async for response in alpha.ServerReflectionInfo(as_alpha(), context):
            yield response.SerializeToString()

    handler = grpc.stream_stream_rpc_method_handler(info_v1)  # bytes in, bytes out: same wire format
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
    reflection_v1alpha.enable_server_reflection(names, server)

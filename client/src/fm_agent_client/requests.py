"""Requests as protobuf messages, or straight as wire bytes.

The wire bytes are what the client sends on the hot path: ``encode_act_request`` writes each RAW frame
from its numpy buffer into the serialized ``ActRequest`` in one copy: 17 us for two 224x224 frames here.
Building the message first costs three copies (``tobytes``, the copy into the message,
``SerializeToString``): 0.1-0.6 ms of the controller's CPU per step, depending on the allocator's state
(docs/latency.md). The bytes are the same protobuf message (a test parses them back), so the server and
every other client see nothing different.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .masks import FutureMaskSpec
from .v1 import policy_pb2 as pb


def _checked_raw(camera: str, image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"camera {camera!r}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def _image_header(camera: str, image: np.ndarray, encoding: int = pb.Image.RAW) -> dict[str, Any]:
    """Every field of an Image but its data: the message and the byte encoders must agree on them."""
    return {
        "camera": camera,
        "encoding": encoding,
        "height": image.shape[0],
        "width": image.shape[1],
        "channels": 3,
        "dtype": "uint8",
    }


def _stamp(observation: pb.Observation, proprio: Sequence[float] | np.ndarray | None) -> None:
    """The fields of an Observation besides its images."""
    observation.client_time = time.time()
    if proprio is not None:
        observation.proprio.extend(np.asarray(proprio, dtype=np.float32).reshape(-1).tolist())


def encode_image(camera: str, image: np.ndarray, encoding: str = "raw", quality: int = 95) -> pb.Image:
    """An (H, W, 3) uint8 array as an Image message (``raw``, ``png`` or ``jpeg``)."""
    image = _checked_raw(camera, image)
    if encoding == "raw":
        return pb.Image(data=image.tobytes(), **_image_header(camera, image))
    from PIL import Image as PILImage  # noqa: PLC0415  (optional: the [images] extra, for PNG/JPEG only)

    buffer = io.BytesIO()
    kind = {"png": ("PNG", pb.Image.PNG), "jpeg": ("JPEG", pb.Image.JPEG)}.get(encoding)
    if kind is None:
        raise ValueError(f"encoding must be raw, png or jpeg, got {encoding!r}")
    PILImage.fromarray(image).save(buffer, format=kind[0], **({"quality": quality} if kind[0] == "JPEG" else {}))
    return pb.Image(data=buffer.getvalue(), **_image_header(camera, image, kind[1]))


def mask_options(
    mask: str | FutureMaskSpec = "",
    merge: bool = False,
    decode_mode: str = "",
    merge_op: str = "",
    merge_kernel: int = 0,
    merge_slots: int = 0,
) -> pb.MaskOptions:
    """The wire form of a mask request.

    ``mask`` is a :class:`FutureMaskSpec` or a label (``Mf+merge(k=5)``, ``Mv2t/full``: parsed here,
    so a typo fails before any call); a bare kind (``Mf``) may instead be combined with the separate
    fields, which go to the server as given (the server validates them). "" = the server's default.
    """
    separate = merge or decode_mode or merge_op or merge_kernel or merge_slots
    if isinstance(mask, str) and not any(mark in mask for mark in "+/("):
        return pb.MaskOptions(
            mask=mask,
            merge=merge,
            decode_mode=decode_mode,
            merge_op=merge_op,
            merge_kernel=merge_kernel,
            merge_slots=merge_slots,
        )
    if separate:
        raise ValueError(f"mask {str(mask)!r} is a full spec already; leave merge/decode_mode/merge_* unset")
    return (mask if isinstance(mask, FutureMaskSpec) else FutureMaskSpec.parse(mask)).to_message()


def start_request(
    instruction: str,
    mask: str | FutureMaskSpec = "",
    merge: bool = False,
    decode_mode: str = "",
    seed: int = 0,
    temperature: float | None = None,
    **merge_options: Any,
) -> pb.StartEpisodeRequest:
    request = pb.StartEpisodeRequest(
        instruction=instruction, seed=seed, mask=mask_options(mask, merge, decode_mode, **merge_options)
    )
    if temperature is not None:
        request.temperature = temperature
    return request


def act_request(
    episode_id: str,
    images: Mapping[str, np.ndarray],
    proprio: Sequence[float] | np.ndarray | None = None,
    encoding: str = "raw",
) -> pb.ActRequest:
    """Builds the request in place: handing finished Image messages to a parent message copies every
    image again (upb copies sub-messages), which cost ~0.3 ms per step for two 224x224 frames."""
    request = pb.ActRequest(episode_id=episode_id)
    observation = request.observation
    for camera, image in images.items():
        if encoding == "raw":
            image = _checked_raw(camera, image)
            observation.images.add(**_image_header(camera, image)).data = image.tobytes()
        else:
            observation.images.append(encode_image(camera, image, encoding))
    _stamp(observation, proprio)
    return request


SERVICE_PATH = "/" + pb.DESCRIPTOR.services_by_name["PolicyService"].full_name + "/"


def prebuilt(channel: Any, kind: str, method: str) -> Any:
    """A multi-callable for ``method`` that sends request bytes as they are (from :func:`encode_act_request`);
    registered with the channel once, as the generated stub's are (grpcio-tools emits the same flag)."""
    return getattr(channel, kind)(
        SERVICE_PATH + method,
        request_serializer=None,
        response_deserializer=pb.ActResponse.FromString,
        _registered_method=True,
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited_key(message: Any, field: str) -> bytes:
    """The key of a length-delimited field (wire type 2), its number read from the schema."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


_OBSERVATION_KEY = _length_delimited_key(pb.ActRequest, "observation")
_IMAGES_KEY = _length_delimited_key(pb.Observation, "images")
_DATA_KEY = _length_delimited_key(pb.Image, "data")


def encode_act_request(
    episode_id: str,
    images: Mapping[str, np.ndarray],
    proprio: Sequence[float] | np.ndarray | None = None,
    encoding: str = "raw",
) -> bytes:
    """``act_request(...).SerializeToString()``, with RAW frames copied once, from their arrays.

    Protobuf's own serializer writes every part except the frame data; each frame goes in as a
    ``data`` field appended to its Image (a parser takes fields in any order), and the nested
    messages get their lengths here."""
    if encoding != "raw":
        return act_request(episode_id, images, proprio, encoding).SerializeToString()
    pieces: list[Any] = []
    for camera, image in images.items():
        image = _checked_raw(camera, image)
        fields = pb.Image(**_image_header(camera, image)).SerializeToString()
        data = image.data.cast("B")  # the contiguous array's own buffer, not a copy
        data_length = _varint(data.nbytes)
        image_length = len(fields) + len(_DATA_KEY) + len(data_length) + data.nbytes
        pieces += [_IMAGES_KEY, _varint(image_length), fields, _DATA_KEY, data_length, data]
    rest = pb.Observation()
    _stamp(rest, proprio)
    pieces.append(rest.SerializeToString())
    observation_length = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in pieces)
    return b"".join(
        [
            pb.ActRequest(episode_id=episode_id).SerializeToString(),
            _OBSERVATION_KEY,
            _varint(observation_length),
            *pieces,
        ]
    )

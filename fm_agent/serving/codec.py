"""Wire messages <-> numpy, with every check a malformed observation needs.

Sizes come first: a RAW image's declared size and a PNG/JPEG image's header are checked against
:class:`~fm_agent.serving.limits.Limits` before a single pixel is decoded, so a small compressed
request cannot make the server allocate gigabytes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image as PILImage

from fm_agent_client.masks import FutureMaskSpec
from fm_agent_client.v1 import policy_pb2 as pb

from .errors import RequestError, invalid
from .limits import MERGE_BOUND, Limits, shorten

PIL_FORMATS = {pb.Image.PNG: "PNG", pb.Image.JPEG: "JPEG"}


def check_image_size(camera: str, height: int, width: int, limits: Limits) -> None:
    """Refuse an image outside the limits before it is decoded or fitted (every wire's images)."""
    if not (0 < height <= limits.max_image_side and 0 < width <= limits.max_image_side):
        raise invalid(
            f"camera {shorten(camera)}: {height}x{width} is outside the server's image side limit "
            f"1..{limits.max_image_side} (max_image_side)"
        )
    if height * width > limits.max_image_pixels:
        raise invalid(
            f"camera {shorten(camera)}: {height}x{width} = {height * width} pixels exceeds the server's "
            f"limit of {limits.max_image_pixels} pixels per image (max_image_pixels)"
        )


def decode_image(image: pb.Image, limits: Limits = Limits()) -> np.ndarray:
    """(H, W, 3) uint8 from a RAW, PNG or JPEG image message."""
    camera = image.camera
    if image.dtype not in ("", "uint8"):
        raise invalid(f"camera {shorten(camera)}: dtype {shorten(image.dtype)} is not supported, send uint8")
    if image.channels not in (0, 3):
        raise invalid(f"camera {shorten(camera)}: {image.channels} channels, expected 3 (RGB)")
    if image.encoding == pb.Image.RAW:
        h, w = image.height, image.width
        if not (h and w):
            raise invalid(f"camera {shorten(camera)}: RAW images need height and width, got {h}x{w}")
        check_image_size(camera, h, w, limits)
        if len(image.data) != h * w * 3:
            raise invalid(
                f"camera {shorten(camera)}: {len(image.data)} bytes do not hold a {h}x{w}x3 uint8 image "
                f"({h * w * 3} bytes)"
            )
        return np.frombuffer(image.data, dtype=np.uint8).reshape(h, w, 3)
    if image.encoding not in PIL_FORMATS:
        raise invalid(f"camera {shorten(camera)}: unknown image encoding {image.encoding}; send RAW, PNG or JPEG")
    name = PIL_FORMATS[image.encoding]
    try:
        with PILImage.open(io.BytesIO(image.data), formats=[name]) as decoded:  # reads the header only
            width, height = decoded.size
            check_image_size(camera, height, width, limits)
            array = np.asarray(decoded.convert("RGB"))
    except RequestError:
        raise
    except PILImage.DecompressionBombError:
        raise invalid(
            f"camera {shorten(camera)}: the {name} header declares an image larger than "
            f"{limits.max_image_pixels} pixels (max_image_pixels)"
        ) from None
    except Exception as error:  # any decoder failure is the data's fault
        raise invalid(f"camera {shorten(camera)}: cannot decode {name} data ({type(error).__name__})") from None
    if (image.height and image.height != array.shape[0]) or (image.width and image.width != array.shape[1]):
        raise invalid(
            f"camera {shorten(camera)}: decoded {array.shape[0]}x{array.shape[1]}, "
            f"message says {image.height}x{image.width}"
        )
    return array


def decode_observation(
    observation: pb.Observation, cameras: list[str], proprio_dim: int, limits: Limits = Limits()
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every check that needs only the message; the frames come back at the size they were sent."""
    if len(observation.images) > len(cameras):
        raise invalid(f"{len(observation.images)} images for a policy that reads {len(cameras)} cameras {cameras}")
    frame: dict[str, np.ndarray] = {}
    for image in observation.images:
        if image.camera not in cameras:
            raise invalid(f"unknown camera {shorten(image.camera)}; this policy reads {cameras}")
        if image.camera in frame:
            raise invalid(f"camera {shorten(image.camera)} sent twice")
        frame[image.camera] = decode_image(image, limits)
    missing = [c for c in cameras if c not in frame]
    if missing:
        raise invalid(f"missing camera(s) {missing}; this policy reads {cameras}")
    return frame, check_proprio(observation.proprio, proprio_dim)


def check_proprio(values: Any, proprio_dim: int, name: str = "proprio") -> np.ndarray | None:
    """The proprio values as (proprio_dim,) float32 (None for a policy without proprio), or INVALID_ARGUMENT."""
    values = np.asarray(values if values is not None else [], dtype=np.float32).reshape(-1)
    if not proprio_dim:
        if len(values):
            raise invalid(f"this policy takes no proprio, got {len(values)} values")
        return None
    if len(values) != proprio_dim:
        raise invalid(f"{name} has {len(values)} values, this policy needs {proprio_dim}")
    if not np.all(np.isfinite(values)):
        raise invalid(f"{name} contains NaN or infinite values")
    return values


def spec_from_message(options: pb.MaskOptions, default: FutureMaskSpec, prompt_length: int) -> FutureMaskSpec:
    """The episode's mask spec; merge windows and slots may not exceed the prompt (``prompt_length`` tokens),
    the most any of them can cover."""
    for field in ("merge_kernel", "merge_slots"):
        value = getattr(options, field)
        if value > prompt_length:
            raise invalid(f"{field} {value} exceeds {MERGE_BOUND} ({prompt_length} tokens for this instruction)")
    for field in ("mask", "decode_mode", "merge_op"):
        if len(getattr(options, field)) > 16:
            raise invalid(f"{field} {shorten(getattr(options, field))} is not a known value")
    try:
        return FutureMaskSpec.from_message(options, default)
    except (ValueError, TypeError) as error:
        raise invalid(str(error)) from None

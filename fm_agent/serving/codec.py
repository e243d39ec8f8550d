"""Wire messages <-> numpy, with every check a malformed observation needs."""

from __future__ import annotations

import io

import numpy as np

from ..attention import FutureMaskSpec, MergeOptions
from ..v1 import policy_pb2 as pb
from .errors import invalid

MAX_IMAGE_SIDE = 4096


def decode_image(image: pb.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a RAW, PNG or JPEG image message."""
    if image.dtype not in ("", "uint8"):
        raise invalid(f"camera {image.camera!r}: dtype {image.dtype!r} is not supported, send uint8")
    if image.channels not in (0, 3):
        raise invalid(f"camera {image.camera!r}: {image.channels} channels, expected 3 (RGB)")
    if image.encoding == pb.Image.RAW:
        h, w = image.height, image.width
        if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
            raise invalid(f"camera {image.camera!r}: RAW images need height and width in 1..{MAX_IMAGE_SIDE}, "
                          f"got {h}x{w}")
        if len(image.data) != h * w * 3:
            raise invalid(f"camera {image.camera!r}: {len(image.data)} bytes do not hold a {h}x{w}x3 uint8 image "
                          f"({h * w * 3} bytes)")
        return np.frombuffer(image.data, dtype=np.uint8).reshape(h, w, 3)
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(image.data)) as decoded:
            array = np.asarray(decoded.convert("RGB"))
    except Exception as error:
        raise invalid(f"camera {image.camera!r}: cannot decode {pb.Image.Encoding.Name(image.encoding)} "
                      f"data ({type(error).__name__})") from None
    if (image.height and image.height != array.shape[0]) or (image.width and image.width != array.shape[1]):
        raise invalid(f"camera {image.camera!r}: decoded {array.shape[0]}x{array.shape[1]}, "
                      f"message says {image.height}x{image.width}")
    return array


def decode_observation(observation: pb.Observation, cameras: list[str], proprio_dim: int
                       ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    frame: dict[str, np.ndarray] = {}
    for image in observation.images:
        if image.camera not in cameras:
            raise invalid(f"unknown camera {image.camera!r}; this policy reads {cameras}")
        if image.camera in frame:
            raise invalid(f"camera {image.camera!r} sent twice")
        frame[image.camera] = decode_image(image)
    missing = [c for c in cameras if c not in frame]
    if missing:
        raise invalid(f"missing camera(s) {missing}; this policy reads {cameras}")
    proprio = None
    if proprio_dim:
        proprio = np.asarray(observation.proprio, dtype=np.float32)
        if proprio.shape[0] != proprio_dim:
            raise invalid(f"proprio has {proprio.shape[0]} values, this policy needs {proprio_dim}")
        if not np.all(np.isfinite(proprio)):
            raise invalid("proprio contains NaN or infinite values")
    elif len(observation.proprio):
        raise invalid(f"this policy takes no proprio, got {len(observation.proprio)} values")
    return frame, proprio


def spec_from_message(options: pb.MaskOptions, default: FutureMaskSpec) -> FutureMaskSpec:
    if not options.mask and not options.merge and not options.decode_mode:
        return default
    try:
        merge = None
        if options.merge:
            merge = MergeOptions(op=options.merge_op or "max", kernel=options.merge_kernel or 3,
                                 slots=options.merge_slots or 1)  # type: ignore[arg-type]
        return FutureMaskSpec(mask=options.mask or "causal", merge=merge,  # type: ignore[arg-type]
                              decode_mode=options.decode_mode or "prefill")  # type: ignore[arg-type]
    except (ValueError, TypeError) as error:
        raise invalid(str(error)) from None


def spec_to_message(spec: FutureMaskSpec) -> pb.MaskOptions:
    message = pb.MaskOptions(mask=spec.mask, merge=spec.merge is not None, decode_mode=spec.decode_mode)
    if spec.merge is not None:
        message.merge_op, message.merge_kernel, message.merge_slots = spec.merge.op, spec.merge.kernel, spec.merge.slots
    return message

"""Requests built without a server: the wire bytes equal the message, masks are checked locally."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fm_agent_client import (
    ROUND_ROBIN,
    FutureMaskSpec,
    act_request,
    channel_target,
    encode_act_request,
    mask_options,
    pb,
    start_request,
)


def test_the_one_copy_encoder_writes_the_same_message_as_protobuf() -> None:
    rng = np.random.default_rng(0)
    images = {
        "agentview": rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
    }
    fast = pb.ActRequest.FromString(encode_act_request("e1", images, [0.5, -1.0]))
    slow = act_request("e1", images, [0.5, -1.0])
    fast.observation.client_time = slow.observation.client_time = 0.0
    assert fast == slow
    assert fast.observation.images[0].height == 24 and fast.observation.images[0].width == 32
    assert bytes(fast.observation.images[1].data) == images["wrist"].tobytes()


def test_images_that_are_not_rgb_uint8_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="camera 'agentview'"):
        encode_act_request("e1", {"agentview": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ValueError, match="uint8"):
        act_request("e1", {"agentview": np.zeros((8, 8, 3), np.float32)})


def test_a_mask_label_is_parsed_client_side_and_sent_in_full() -> None:
    request = start_request("put the bowl on the plate", mask="Mf+merge(k=5)", seed=3, temperature=0.5)
    assert (request.mask.mask, request.mask.merge, request.mask.merge_kernel) == ("Mf", True, 5)
    assert request.seed == 3 and request.temperature == pytest.approx(0.5)
    assert mask_options(FutureMaskSpec.parse("Mv2t/full")).decode_mode == "full"
    assert mask_options("") == pb.MaskOptions()  # the server's default
    with pytest.raises(ValueError, match="unknown mask"):
        mask_options("Mq+merge")
    with pytest.raises(ValueError, match="full spec already"):
        mask_options("Mf+merge", merge=True)
    # a bare kind with separate fields goes to the server as given (the server validates it)
    assert mask_options("Mx", merge=True).mask == "Mx"


def test_the_client_imports_no_ml_stack() -> None:
    code = "import sys, fm_agent_client; print([m for m in ('torch', 'transformers', 'fm_agent') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_several_addresses_make_one_round_robin_target() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    target, options = channel_target("127.0.0.1:5001, localhost:5002")
    assert target == "ipv4:127.0.0.1:5001,127.0.0.1:5002" and options == [ROUND_ROBIN]
    assert channel_target("[::1]:5001,[::1]:5002")[0] == "ipv6:[::1]:5001,[::1]:5002"
    with pytest.raises(ValueError, match="all be IPv4 or all IPv6"):
        channel_target("127.0.0.1:5001,[::1]:5002")

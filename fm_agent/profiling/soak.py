"""Load and soak: many episodes of valid traffic with a share of hostile requests mixed in.

A benchmark, not a test: it prints and saves what it measured. What must hold: no valid request
fails, every bad one gets a client-error status, health answers fast throughout, and the server's
memory after the run is where it was before (episodes end, frames are fitted, nothing piles up).

    fm-agent soak --episodes 8 --seconds 60 --bad-fraction 0.2 --out runs/soak
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage
from tqdm import tqdm

from fm_agent_client import PolicyClient, encode_image, pb

from ..serving.local import LocalServer
from .config import SoakConfig

CLIENT_ERRORS = ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "OUT_OF_RANGE")


def _png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_requests(cameras: list[str], proprio_dim: int, episode: str) -> dict[str, Callable[[grpc.Channel], None]]:
    """One request of each hostile class, sent as raw bytes so nothing client-side can refuse it first."""
    good = {c: encode_image(c, np.zeros((16, 16, 3), np.uint8)) for c in cameras}
    bomb = _png(3000, 3000)  # a few KB that decode to 27 MB

    def act(images: list[pb.Image], proprio: list[float] | None = None, episode_id: str = episode) -> bytes:
        observation = pb.Observation(images=images, proprio=[0.0] * proprio_dim if proprio is None else proprio)
        return pb.ActRequest(episode_id=episode_id, observation=observation).SerializeToString()

    def start(**fields) -> bytes:
        return pb.StartEpisodeRequest(**fields).SerializeToString()

    payloads = {
        "garbage_bytes": ("Act", b"\xff" * 64),
        "unknown_camera": ("Act", act([pb.Image(camera="top", encoding=pb.Image.PNG, data=_png(8, 8))])),
        "missing_camera": ("Act", act(list(good.values())[:-1])),
        "png_bomb": (
            "Act",
            act([pb.Image(camera=cameras[0], encoding=pb.Image.PNG, data=bomb), *list(good.values())[1:]]),
        ),
        "corrupt_png": (
            "Act",
            act(
                [pb.Image(camera=cameras[0], encoding=pb.Image.PNG, data=b"\x89PNG garbage"), *list(good.values())[1:]]
            ),
        ),
        "nan_proprio": ("Act", act(list(good.values()), [float("nan")] * max(1, proprio_dim))),
        "unknown_episode": ("Act", act(list(good.values()), episode_id="no-such-episode" * 100)),
        "megabyte_instruction": ("StartEpisode", start(instruction="go " * 350_000)),
        "huge_merge_slots": (
            "StartEpisode",
            start(instruction="pick up the bowl", mask=pb.MaskOptions(mask="Mf", merge=True, merge_slots=2**32 - 1)),
        ),
    }

    def sender(method: str, payload: bytes) -> Callable[[grpc.Channel], None]:
        return lambda channel: channel.unary_unary(f"/fm_agent.v1.PolicyService/{method}")(payload, timeout=30)

    return {name: sender(method, payload) for name, (method, payload) in payloads.items()}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "p50": float(np.percentile(array, 50)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
        "n": len(values),
    }


def run_soak(settings: SoakConfig, progress: Callable[[float], None] | None = None) -> dict:
    server = None
    address = settings.server
    if address is None:
        server = LocalServer(settings.checkpoint, threads=settings.server_threads)
        address = server.start()
    try:
        return _soak(address, settings, server.process.pid if server and server.process else None, progress)
    finally:
        if server is not None:
            server.stop()


def _soak(address: str, settings: SoakConfig, pid: int | None, progress) -> dict:
    with PolicyClient(address, timeout=30, retries=0) as probe:
        info = probe.info()
    cameras, proprio_dim = [c.name for c in info.cameras], info.proprio_dim
    instruction = "pick up the black bowl and place it on the plate"
    rng = np.random.default_rng(settings.seed)
    frames = [
        {c: rng.integers(0, 256, (settings.image_size, settings.image_size, 3), dtype=np.uint8) for c in cameras}
        for _ in range(8)
    ]
    proprio = np.zeros(proprio_dim) if proprio_dim else None
    with PolicyClient(address, timeout=30, retries=0) as warm:  # one step so the model is warm before RSS
        episode = warm.start_episode(instruction)
        warm.act(episode, frames[0], proprio)
        warm.end_episode(episode)
    rss_before = _rss_mb(pid) if pid else None
    lock = threading.Lock()
    valid_ms: list[float] = []
    valid_failures: Counter = Counter()
    bad_outcomes: dict[str, Counter] = {}
    stop_at = time.monotonic() + settings.seconds

    def episode_loop(index: int) -> None:
        chooser = random.Random(settings.seed + index)
        with PolicyClient(address, timeout=30, retries=0) as client:
            episode = client.start_episode(
                instruction, mask=chooser.choice(["causal", "Mf"]), merge=chooser.random() < 0.5
            )
            bad = bad_requests(cameras, proprio_dim, episode)
            step = 0
            while time.monotonic() < stop_at:
                if chooser.random() < settings.bad_fraction:
                    name = chooser.choice(sorted(bad))
                    try:
                        bad[name](client.channel)
                        outcome = "OK"
                    except grpc.RpcError as error:
                        outcome = error.code().name
                    with lock:
                        bad_outcomes.setdefault(name, Counter())[outcome] += 1
                    continue
                started = time.perf_counter()
                try:
                    client.act(episode, frames[step % len(frames)], proprio)
                    with lock:
                        valid_ms.append((time.perf_counter() - started) * 1e3)
                except grpc.RpcError as error:
                    with lock:
                        valid_failures[error.code().name] += 1
                step += 1
            client.end_episode(episode)

    health_ms: list[float] = []
    health_bad: Counter[str] = Counter()
    rss_timeline: list[tuple[float, float]] = []  # (seconds into the run, MB): growth vs plateau

    def health_loop() -> None:
        next_rss = time.monotonic()
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < stop_at:
                if pid and time.monotonic() >= next_rss:
                    rss_timeline.append((round(time.monotonic() - run_start, 1), _rss_mb(pid)))
                    next_rss += 10.0
                started = time.perf_counter()
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                health_ms.append((time.perf_counter() - started) * 1e3)
                if status != health_pb2.HealthCheckResponse.SERVING:
                    health_bad[health_pb2.HealthCheckResponse.ServingStatus.Name(status)] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=episode_loop, args=(i,)) for i in range(settings.episodes)]
    threads.append(threading.Thread(target=health_loop))
    run_start = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        if progress:
            progress(min(1.0, (time.monotonic() - run_start) / settings.seconds))
    elapsed = time.monotonic() - run_start
    time.sleep(1.0)
    bad_total = sum(sum(c.values()) for c in bad_outcomes.values())
    misclassified = {name: {k: v for k, v in c.items() if k not in CLIENT_ERRORS} for name, c in bad_outcomes.items()}
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "address": address,
        "elapsed_s": elapsed,
        "rpcs": len(valid_ms) + sum(valid_failures.values()) + bad_total,
        "valid": {
            "ok": len(valid_ms),
            "failed": dict(valid_failures),
            "latency_ms": _percentiles(valid_ms),
            "steps_per_s": len(valid_ms) / elapsed,
        },
        "bad": {
            "sent": bad_total,
            "by_class": {k: dict(v) for k, v in bad_outcomes.items()},
            "not_a_client_error": {k: v for k, v in misclassified.items() if v},
        },
        "health": {"latency_ms": _percentiles(health_ms), "not_serving": dict(health_bad)},
        "server_rss_mb": {"before": rss_before, "after": _rss_mb(pid) if pid else None, "timeline": rss_timeline},
    }


def format_report(report: dict) -> str:
    valid, bad, health = report["valid"], report["bad"], report["health"]
    lines = [
        f"soak: {report['settings']['episodes']} episodes x {report['elapsed_s']:.0f} s against {report['address']}",
        f"  RPCs {report['rpcs']}: valid {valid['ok']} ok, failed {sum(valid['failed'].values())} "
        f"{valid['failed'] or ''}; bad {bad['sent']}, not a client error: {bad['not_a_client_error'] or 'none'}",
        f"  valid Act latency p50 {valid['latency_ms'].get('p50', float('nan')):.1f} ms, "
        f"p99 {valid['latency_ms'].get('p99', float('nan')):.1f} ms, {valid['steps_per_s']:.1f} steps/s",
        f"  health p50 {health['latency_ms'].get('p50', float('nan')):.2f} ms, "
        f"p99 {health['latency_ms'].get('p99', float('nan')):.2f} ms, "
        f"max {health['latency_ms'].get('max', float('nan')):.2f} ms; not SERVING: {health['not_serving'] or 'never'}",
    ]
    rss = report["server_rss_mb"]
    if rss["before"] is not None:
        lines.append(
            f"  server RSS {rss['before']:.0f} MB before, {rss['after']:.0f} MB after; every 10 s: "
            + " ".join(f"{mb:.0f}" for _, mb in rss["timeline"])
        )
    for name, outcomes in sorted(bad["by_class"].items()):
        lines.append(f"    {name:22} {outcomes}")
    return "\n".join(lines)


def write_soak(config: SoakConfig, command: str = "") -> int:
    bar = tqdm(total=100, desc="soak", unit="%")

    def progress(fraction: float) -> None:
        bar.n = int(fraction * 100)
        bar.refresh()

    report = run_soak(config, progress)
    bar.close()
    report["command"] = command
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "soak.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"wrote {config.out / 'soak.json'}")
    clean = not report["valid"]["failed"] and not report["bad"]["not_a_client_error"]
    return 0 if clean else 1

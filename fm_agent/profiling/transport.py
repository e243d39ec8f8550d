"""Transport cost of one control step: fm-agent's typed gRPC vs openpi's msgpack-over-websockets vs pickle.

All three paths end in the same ``VLAPolicy.predict`` on the same checkpoint, each served from its own
process on loopback (as deployed: a robot controller and a policy server), so
``round trip - in-process step`` is what the wire, the (de)serialisation and the server add; as the
model step itself is noisy, each server also reports its own time per call, and
``round trip - server time`` (per call, then the median) isolates the transport.
Also measures throughput with concurrent episodes, with and without micro-batching.
The openpi path needs ``pip install --no-deps openpi-client==0.1.2 msgpack websockets``.
"""

from __future__ import annotations

import json
import pickle
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _timed(fn: Callable[[], Any], repeats: int, wire: list[float] | None = None) -> list[float]:
    """Round trips in ms; with ``wire``, also each call's round trip minus the server's own time
    (``fn`` returns that time), which isolates the transport from the noisy model step."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        server_ms = fn()
        out.append((time.perf_counter() - start) * 1e3)
        if wire is not None:
            wire.append(out[-1] - float(server_ms))
    return out


def _stats(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [50, 95])
    return {"p50_ms": float(q[0]), "p95_ms": float(q[1]), "mean_ms": float(statistics.mean(values)), "n": len(values)}


def _codec(kind: str) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if kind == "msgpack":
        from openpi_client import msgpack_numpy

        return msgpack_numpy.unpackb, msgpack_numpy.packb
    return pickle.loads, pickle.dumps


def serve_websocket(kind: str, checkpoint: str, threads: int = 1) -> None:
    """Process entry point: a websockets server speaking openpi's protocol shape (metadata first, then
    request/reply) with ``kind`` = msgpack (openpi's msgpack-numpy) or pickle; prints its port."""
    import torch

    from ..model import VLAPolicy

    torch.set_num_threads(threads)
    server, port = _websocket_server(VLAPolicy.from_pretrained(checkpoint), *_codec(kind))
    print(port, flush=True)
    server.serve_forever()


class _WebsocketProcess:
    def __init__(self, kind: str, checkpoint: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "import sys; from fm_agent.profiling.transport import "
                                         "serve_websocket; serve_websocket(sys.argv[1], sys.argv[2])", kind,
                                         str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise ImportError(f"the {kind} websocket server did not start (is its package installed?)")
        self.port = int(line)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _websocket_server(policy, decode: Callable[[bytes], dict], encode: Callable[[dict], bytes]):
    from websockets.sync.server import serve

    from ..model import Observation

    def handler(connection) -> None:
        connection.send(encode({}))
        for message in connection:
            received = time.perf_counter()
            obs = decode(message)
            frames = [{c: obs[c] for c in policy.config.cameras}]
            result = policy.predict([Observation(frames, obs["prompt"], obs.get("state"))])[0]
            server_ms = (time.perf_counter() - received) * 1e3  # decode + model, as fm-agent's server_ms
            connection.send(encode({"actions": result.actions, "server_ms": server_ms}))

    server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    return server, server.socket.getsockname()[1]


def run_transport_benchmark(checkpoint: Path, repeats: int = 50, image_size: int = 224, concurrent: int = 8,
                            concurrent_steps: int = 20) -> dict[str, Any]:
    import torch

    from ..client import PolicyClient
    from ..evaluation.grpc_actor import LocalServer
    from ..model import Observation, VLAPolicy

    torch.set_num_threads(1)
    policy = VLAPolicy.from_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for c in policy.config.cameras}
    proprio = np.zeros(policy.config.proprio_dim, np.float32) if policy.config.proprio_dim else None
    instruction = "pick up the black bowl and place it on the plate"
    payload_bytes = sum(a.nbytes for a in images.values())
    report: dict[str, Any] = {"payload": {"cameras": list(images), "shape": [image_size, image_size, 3],
                                          "bytes": payload_bytes}, "repeats": repeats}

    in_process = _timed(lambda: policy.predict([Observation([images], instruction, proprio)]), repeats)
    report["in_process_step"] = _stats(in_process)

    server = LocalServer(checkpoint, threads=1)
    address = server.start()
    try:
        with PolicyClient(address) as client:
            episode = client.start_episode(instruction)
            wire: list[float] = []
            grpc_rtt = _timed(lambda: client.act(episode, images, proprio).latency["server_ms"], repeats, wire)
            report["grpc"] = _stats(grpc_rtt)
            report["grpc"]["round_trip_minus_server_p50_ms"] = float(np.median(wire))
            with client.open_stream() as stream:
                wire = []
                report["grpc_stream"] = _stats(_timed(lambda: stream.act(episode, images, proprio).latency["server_ms"],
                                                      repeats, wire))
                report["grpc_stream"]["round_trip_minus_server_p50_ms"] = float(np.median(wire))
        report["throughput"] = {}
        for label, batch in (("micro_batching", 8), ("no_batching", 1)):
            server.stop()
            server = LocalServer(checkpoint, ("--max-batch", str(batch)), threads=1)
            address = server.start()
            report["throughput"][label] = _throughput(address, images, proprio, instruction, concurrent,
                                                      concurrent_steps)
        t = report["throughput"]
        t["ratio"] = t["micro_batching"]["steps_per_s"] / t["no_batching"]["steps_per_s"]
    finally:
        server.stop()

    obs = {**images, "prompt": instruction, **({"state": proprio} if proprio is not None else {})}
    try:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        ws = _WebsocketProcess("msgpack", checkpoint)
        try:
            client = WebsocketClientPolicy("127.0.0.1", ws.port)
            wire = []
            report["openpi_msgpack_websocket"] = _stats(_timed(lambda: client.infer(obs)["server_ms"], repeats, wire))
            report["openpi_msgpack_websocket"]["round_trip_minus_server_p50_ms"] = float(np.median(wire))
        finally:
            ws.stop()
    except ImportError as error:
        report["openpi_msgpack_websocket"] = {"skipped": f"openpi-client not installed ({error})"}
    try:
        from websockets.sync.client import connect

        ws = _WebsocketProcess("pickle", checkpoint)
        try:
            connection = connect(f"ws://127.0.0.1:{ws.port}", compression=None, max_size=None)
            connection.recv()

            def pickled() -> float:
                connection.send(pickle.dumps(obs))
                return pickle.loads(connection.recv())["server_ms"]

            wire = []
            report["pickle_websocket"] = _stats(_timed(pickled, repeats, wire))
            report["pickle_websocket"]["round_trip_minus_server_p50_ms"] = float(np.median(wire))
            connection.close()
        finally:
            ws.stop()
    except ImportError as error:
        report["pickle_websocket"] = {"skipped": f"websockets not installed ({error})"}
    for key in ("grpc", "grpc_stream", "openpi_msgpack_websocket", "pickle_websocket"):
        if "p50_ms" in report[key]:
            report[key]["overhead_p50_ms"] = report[key]["p50_ms"] - report["in_process_step"]["p50_ms"]
    return report


def _throughput(address: str, images, proprio, instruction: str, episodes: int, steps: int) -> dict[str, float]:
    from ..client import PolicyClient

    barrier = threading.Barrier(episodes + 1)

    def run() -> None:
        with PolicyClient(address) as client:
            episode = client.start_episode(instruction)
            client.act(episode, images, proprio)  # warm
            barrier.wait()
            for _ in range(steps):
                client.act(episode, images, proprio)

    threads = [threading.Thread(target=run) for _ in range(episodes)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"episodes": episodes, "steps": episodes * steps, "seconds": elapsed,
            "steps_per_s": episodes * steps / elapsed}


def main(checkpoint: Path, out: Path, repeats: int) -> int:
    report = run_transport_benchmark(checkpoint, repeats)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.json").write_text(json.dumps(report, indent=2))
    print(f"payload: {report['payload']}")
    print(f"in-process step p50 {report['in_process_step']['p50_ms']:.2f} ms")
    for key in ("grpc", "grpc_stream", "openpi_msgpack_websocket", "pickle_websocket"):
        r = report[key]
        if "p50_ms" in r:
            print(f"{key:26s} round trip p50 {r['p50_ms']:.2f} ms p95 {r['p95_ms']:.2f} ms; minus in-process step "
                  f"{r['overhead_p50_ms']:.2f} ms; minus the server's own time (transport) "
                  f"{r['round_trip_minus_server_p50_ms']:.2f} ms")
        else:
            print(f"{key:26s} {r['skipped']}")
    t = report["throughput"]
    print(f"8 concurrent episodes: {t['micro_batching']['steps_per_s']:.1f} steps/s with micro-batching, "
          f"{t['no_batching']['steps_per_s']:.1f} without (x{t['ratio']:.2f})")
    print(f"wrote {out / 'transport.json'}")
    return 0

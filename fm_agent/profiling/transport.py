"""Transport cost of one control step: fm-agent's typed gRPC vs openpi's msgpack-over-websockets vs pickle.

All three paths end in the same ``VLAPolicy.predict`` on the same checkpoint, each served from its own
process on loopback (as deployed: a robot controller and a policy server), so
``round trip - in-process step`` is what the wire, the (de)serialisation and the server add; as the
model step itself is noisy, each server also reports its own time per call, and
``round trip - server time`` (per call, then the median) isolates the transport.

The paths are timed side by side: all servers run at once and the calls take turns in an order that
rotates (:func:`time_paths`). Timing one path after another instead lets the machine's drift between
the windows decide the comparison: on this 2-core machine that moved a path by 0.1-0.2 ms, as much
as the differences being measured (docs/latency.md).
Also measures throughput with concurrent episodes, with and without micro-batching.
The openpi path needs ``pip install --no-deps openpi-client==0.1.2 msgpack websockets`` (launch/setup.sh
does that).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from fm_agent_client import PolicyClient

from ..model import Observation, VLAPolicy
from ..serving.local import LocalServer
from ..serving.openpi import OpenpiMapping

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def _codec(kind: str) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if kind == "msgpack":
        from openpi_client import msgpack_numpy  # noqa: PLC0415  (optional: openpi's client, benchmark only)

        return msgpack_numpy.unpackb, msgpack_numpy.packb
    return pickle.loads, pickle.dumps


def serve_websocket(kind: str, checkpoint: str, threads: int = 1) -> None:
    """Process entry point: a websockets server speaking openpi's protocol shape (metadata first, then
    request/reply) with ``kind`` = msgpack (openpi's msgpack-numpy) or pickle; prints its port."""
    torch.set_num_threads(threads)
    server, port = _websocket_server(VLAPolicy.from_pretrained(checkpoint), *_codec(kind))
    print(port, flush=True)
    server.serve_forever()


class _WebsocketProcess:
    def __init__(self, kind: str, checkpoint: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from fm_agent.profiling.transport import "
                "serve_websocket; serve_websocket(sys.argv[1], sys.argv[2])",
                kind,
                str(checkpoint),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None  # stdout=PIPE
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise ImportError(f"the {kind} websocket server did not start (is its package installed?)")
        self.port = int(line)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _websocket_server(policy, decode: Callable[[bytes], dict], encode: Callable[[dict], bytes]):
    from websockets.sync.server import serve  # noqa: PLC0415  (optional: comes with openpi's client)

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


ORDERINGS = {"interleaved": 1, "blocks": 20}  # calls per path per turn


def time_paths(
    paths: dict[str, Callable[[], float | None]],
    rounds: int,
    block: int = 1,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Calls every path ``rounds`` times, in turns of ``block`` calls per path, the order of the paths
    rotating by one each turn so that no path always follows the same one (what ran just before a
    call, e.g. a server finishing its reply, shows in that call's time on a 2-core machine).

    A path returns its server's own time for the call (ms) or None (in-process). Per call, the round
    trip (ms) and, where the server reported its time, round trip minus server time: the transport."""
    names = list(paths)
    out: dict[str, dict[str, list[float]]] = {name: {"round_trip": [], "transport": []} for name in names}
    for name in names:  # warm-up: connections, first-call allocations
        for _ in range(3):
            paths[name]()
    for turn in range(-(-rounds // block)):
        order = names[turn % len(names) :] + names[: turn % len(names)]
        for name in order:
            for _ in range(min(block, rounds - turn * block)):
                start = time.perf_counter()
                server_ms = paths[name]()
                elapsed = (time.perf_counter() - start) * 1e3
                out[name]["round_trip"].append(elapsed)
                if server_ms is not None:
                    out[name]["transport"].append(elapsed - float(server_ms))
        if progress is not None:
            progress(min(block, rounds - turn * block))
    return out


def _stats(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [25, 50, 75, 95])
    return {
        "p25_ms": float(q[0]),
        "p50_ms": float(q[1]),
        "p75_ms": float(q[2]),
        "p95_ms": float(q[3]),
        "mean_ms": float(statistics.mean(values)),
        "n": len(values),
    }


def summarise_paths(timings: dict[str, dict[str, list[float]]], in_process: str = "in_process_step") -> dict:
    """Per path: round-trip and transport quartiles, and round-trip p50 minus the in-process step's p50
    (the issue's definition; the per-call transport is the finer measure, as the model step is noisy)."""
    base = float(np.median(timings[in_process]["round_trip"])) if in_process in timings else None
    summary = {}
    for name, values in timings.items():
        row: dict[str, Any] = {"round_trip": _stats(values["round_trip"])}
        if values["transport"]:
            row["transport"] = _stats(values["transport"])
        if base is not None and name != in_process:
            row["round_trip_minus_in_process_p50_ms"] = row["round_trip"]["p50_ms"] - base
        summary[name] = row
    return summary


def run_transport_benchmark(
    checkpoint: Path,
    repeats: int = 100,
    image_size: int = 224,
    concurrent: int = 8,
    concurrent_steps: int = 20,
    progress: Callable[[int, int, str], Any] | None = None,
) -> dict[str, Any]:
    """Every path's server is up at once and the calls take turns (see :func:`time_paths`), once one
    call per turn ("interleaved": every server idles while the others work, as a policy server idles
    while the robot executes a chunk) and once 20 per turn ("blocks": each path's calls back to back).
    ``progress(calls, total, ordering)`` is told of every finished turn."""
    torch.set_num_threads(1)
    policy = VLAPolicy.from_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for c in policy.config.cameras}
    proprio = np.zeros(policy.config.proprio_dim, np.float32) if policy.config.proprio_dim else None
    instruction = "pick up the black bowl and place it on the plate"
    payload_bytes = sum(a.nbytes for a in images.values())
    report: dict[str, Any] = {
        "payload": {"cameras": list(images), "shape": [image_size, image_size, 3], "bytes": payload_bytes},
        "repeats": repeats,
        "skipped": {},
    }
    obs = {**images, "prompt": instruction, **({"state": proprio} if proprio is not None else {})}
    history = [images] * policy.config.history  # what the server's episode holds after its first steps

    def in_process() -> None:
        policy.predict([Observation(history, instruction, proprio)])

    with contextlib.ExitStack() as stack:
        server = LocalServer(checkpoint, ("--openpi-port", "0"), threads=1)
        address = server.start()
        stack.callback(server.stop)
        client = stack.enter_context(PolicyClient(address))
        no_deadline = stack.enter_context(PolicyClient(address, timeout=None))
        episodes = {
            name: client.start_episode(instruction) for name in ("unary", "unary_nd", "stream", "stream_threaded")
        }
        stream = stack.enter_context(client.open_stream())
        threaded = stack.enter_context(client.open_stream("threaded"))
        report["stream_driver"] = stream.driver
        paths: dict[str, Callable[[], float | None]] = {
            "in_process_step": in_process,
            "grpc": lambda: client.act(episodes["unary"], images, proprio).latency["server_ms"],
            "grpc_no_deadline": lambda: no_deadline.act(episodes["unary_nd"], images, proprio).latency["server_ms"],
            "grpc_stream": lambda: stream.act(episodes["stream"], images, proprio).latency["server_ms"],
            "grpc_stream_threaded": lambda: threaded.act(episodes["stream_threaded"], images, proprio).latency[
                "server_ms"
            ],
        }
        try:
            from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: PLC0415  (optional)

            # fm-agent's own openpi endpoint (fm-agent serve --openpi-port), inside the gRPC server's process
            keys = OpenpiMapping.default(policy.config.cameras).cameras
            endpoint_obs: dict[str, Any] = {
                k: images[c][:, ::-1] for k, c in keys.items()
            }  # the default flip undoes it
            endpoint_obs["prompt"] = instruction
            if proprio is not None:
                endpoint_obs["observation/state"] = proprio
            endpoint = WebsocketClientPolicy(f"ws://{server.openpi_address}")
            paths["fm_agent_openpi_endpoint"] = lambda: endpoint.infer(endpoint_obs)["server_timing"]["infer_ms"]

            ws = _WebsocketProcess("msgpack", checkpoint)
            stack.callback(ws.stop)
            openpi = WebsocketClientPolicy("127.0.0.1", ws.port)
            paths["openpi_msgpack_websocket"] = lambda: openpi.infer(obs)["server_ms"]
        except ImportError as error:
            report["skipped"]["openpi_msgpack_websocket"] = f"openpi-client not installed ({error})"
        try:
            from websockets.sync.client import connect  # noqa: PLC0415  (optional)

            ws_pickle = _WebsocketProcess("pickle", checkpoint)
            stack.callback(ws_pickle.stop)
            connection = stack.enter_context(
                connect(f"ws://127.0.0.1:{ws_pickle.port}", compression=None, max_size=None)
            )
            connection.recv()  # the metadata message

            def pickled() -> float:
                connection.send(pickle.dumps(obs))
                reply = connection.recv()
                assert isinstance(reply, bytes)  # the server sends binary frames
                return pickle.loads(reply)["server_ms"]

            paths["pickle_websocket"] = pickled
        except ImportError as error:
            report["skipped"]["pickle_websocket"] = f"websockets not installed ({error})"
        report["orderings"] = {}
        for ordering, block in ORDERINGS.items():
            total = repeats * len(paths) * len(ORDERINGS)
            tick = (lambda n, ordering=ordering: progress(n * len(paths), total, ordering)) if progress else None
            timings = time_paths(paths, repeats, block, tick)
            report["orderings"][ordering] = {"calls_per_turn": block, "paths": summarise_paths(timings)}

    report["throughput"] = {}
    for label, batch in (("micro_batching", 8), ("no_batching", 1)):
        server = LocalServer(checkpoint, ("--max-batch", str(batch)), threads=1)
        address = server.start()
        try:
            report["throughput"][label] = _throughput(
                address, images, proprio, instruction, concurrent, concurrent_steps
            )
        finally:
            server.stop()
    t = report["throughput"]
    t["ratio"] = t["micro_batching"]["steps_per_s"] / t["no_batching"]["steps_per_s"]
    return report


def _throughput(address: str, images, proprio, instruction: str, episodes: int, steps: int) -> dict[str, float]:
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
    return {
        "episodes": episodes,
        "steps": episodes * steps,
        "seconds": elapsed,
        "steps_per_s": episodes * steps / elapsed,
    }


LABELS = {
    "in_process_step": "in-process step",
    "grpc": "gRPC Act (30 s deadline)",
    "grpc_no_deadline": "gRPC Act (no deadline)",
    "grpc_stream": "gRPC StreamAct",
    "grpc_stream_threaded": "gRPC StreamAct, threaded",
    "fm_agent_openpi_endpoint": "fm-agent openpi endpoint",
    "openpi_msgpack_websocket": "openpi msgpack/websocket",
    "pickle_websocket": "pickle/websocket",
}


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"payload: {report['payload']['bytes']} bytes ({len(report['payload']['cameras'])} x "
        f"{'x'.join(map(str, report['payload']['shape']))} uint8), {report['repeats']} calls per path"
    ]
    for ordering, result in report["orderings"].items():
        lines.append(f"\n{ordering} ({result['calls_per_turn']} call(s) per path per turn, order rotating):")
        lines.append(
            f"  {'path':28s} {'round trip p50':>14s} {'- in-process':>12s} {'transport p25/p50/p75 (ms)':>28s}"
        )
        for name, row in result["paths"].items():
            transport = row.get("transport")
            t = (
                f"{transport['p25_ms']:.2f} / {transport['p50_ms']:.2f} / {transport['p75_ms']:.2f}"
                if transport
                else "-"
            )
            minus = row.get("round_trip_minus_in_process_p50_ms")
            lines.append(
                f"  {LABELS.get(name, name):28s} {row['round_trip']['p50_ms']:11.2f} ms "
                f"{'' if minus is None else f'{minus:9.2f} ms':>12s} {t:>28s}"
            )
    for name, why in report["skipped"].items():
        lines.append(f"  {LABELS.get(name, name)}: skipped, {why}")
    t = report["throughput"]
    lines.append(
        f"\n{8} concurrent episodes: {t['micro_batching']['steps_per_s']:.1f} steps/s with micro-batching, "
        f"{t['no_batching']['steps_per_s']:.1f} without (x{t['ratio']:.2f})"
    )
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Transport (round trip minus server time) per path, quartiles and p95, one panel per ordering."""
    orderings = report["orderings"]
    fig, axes = plt.subplots(1, len(orderings), figsize=(5.5 * len(orderings), 3.6), sharey=True, squeeze=False)
    for ax, (ordering, result) in zip(axes[0], orderings.items()):
        rows = [(LABELS.get(n, n), r["transport"]) for n, r in result["paths"].items() if "transport" in r]
        for i, (_label, t) in enumerate(rows):
            ax.plot([i, i], [t["p25_ms"], t["p75_ms"]], lw=8, color="C0", alpha=0.5, solid_capstyle="butt")
            ax.plot([i, i], [t["p75_ms"], t["p95_ms"]], lw=1, color="C0")
            ax.plot(i, t["p50_ms"], "o", color="C3")
            ax.annotate(f"{t['p50_ms']:.2f}", (i, t["p50_ms"]), textcoords="offset points", xytext=(8, -3), fontsize=8)
        ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=25, ha="right", fontsize=8)
        ax.axhline(1.0, ls="--", color="gray", lw=0.8)
        ax.set_title(f"{ordering}: {result['calls_per_turn']} call(s) per turn", fontsize=9)
        ax.set_ylabel("round trip - server time (ms)")
        ax.set_ylim(bottom=0)
    fig.suptitle(
        f"one control step, {report['payload']['bytes'] // 1000} KB of frames, loopback (median, quartiles, p95)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(checkpoint: Path, out: Path, repeats: int, command: str = "") -> int:
    bar = tqdm(desc="transport calls", unit="call", mininterval=1.0)

    def progress(calls: int, total: int, ordering: str) -> None:
        bar.total = total
        bar.set_postfix(ordering=ordering, refresh=False)
        bar.update(calls)

    report = run_transport_benchmark(checkpoint, repeats, progress=progress)
    bar.close()
    report["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.json").write_text(json.dumps(report, indent=2))
    plot_report(report, out / "transport.png")
    print(format_report(report))
    print(f"wrote {out / 'transport.json'} and {out / 'transport.png'}")
    return 0

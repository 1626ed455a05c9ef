"""Benchmark `leader serve`: latency, throughput, and robustness against hostile requests.

Starts `leader serve` on a free loopback port (with a bearer token, so wrong tokens are tested)
and, with a bounded number of requests:

1. single-client latency of POST /v1/recommend (p50 / p99 over ``--requests``);
2. throughput with ``--clients`` concurrent clients (keep-alive connections, one thread each);
3. ``--hostile`` malformed or hostile requests (invalid JSON, wrong types, huge lists, unknown
   fields, oversize bodies, deep nesting, wrong or missing token): counts status codes; any 5xx
   is a failure; then checks that the server is still healthy.

    .venv/bin/python benchmarks/serve.py --model MODEL_DIR [--out benchmarks/results/serve.md]

Exits non-zero if any hostile request got a 5xx or the server is unhealthy afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

TOKEN = "benchmark-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.reset()
                return response.status, data
            except (ConnectionError, http.client.HTTPException, OSError):
                self.reset()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def reset(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def demo_patient(model_dir: Path, rng: random.Random) -> dict:
    """A realistic patient from the bundle's own vocabulary: two earlier visits and a current
    one, ~8 diagnoses and ~3 procedures per visit, drugs on the earlier visits."""
    vocab = json.loads((model_dir / "vocab.json").read_text())
    dx = [d["code"] for d in vocab["diagnoses"]]
    px = [d["code"] for d in vocab["procedures"]]
    drugs = [d["code"] for d in vocab["drugs"]]
    visits = []
    for i in range(3):
        visit = {
            "diagnoses": rng.sample(dx, min(8, len(dx))),
            "procedures": rng.sample(px, min(3, len(px))),
        }
        if i < 2:
            visit["drugs"] = rng.sample(drugs, min(6, len(drugs)))
        visits.append(visit)
    profile = {"gender": "F", "age": 71}
    return {"profile": profile, "visits": visits}


def hostile_requests(patient: dict) -> list[tuple[str, str, bytes, dict]]:
    """(name, path, body, headers) of malformed or hostile requests; cycled to --hostile."""
    ok = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    p = json.dumps(patient).encode()

    def body(obj) -> bytes:
        return json.dumps(obj).encode()

    v0 = patient["visits"][-1]
    cases = [
        ("invalid JSON", b"{'visits': ["),
        ("truncated JSON", p[: len(p) // 2]),
        ("empty body", b""),
        ("not UTF-8", b"\xff\xfe\xfa" * 10),
        ("JSON array", b"[1, 2, 3]"),
        ("JSON null", b"null"),
        ("wrong type: visits", body({"visits": "many"})),
        ("wrong type: codes", body({"visits": [{"diagnoses": [4019, 25000]}]})),
        ("wrong type: icd_version", body({"visits": [{**v0, "icd_version": "10"}]})),
        ("wrong type: age", body({"profile": {"age": [70]}, "visits": [v0]})),
        ("unknown field", body({**patient, "comment": "x"})),
        ("unknown visit field", body({"visits": [{**v0, "labs": [1]}]})),
        ("no visits", body({"visits": []})),
        ("too many visits", body({"visits": [{}] * 101})),
        ("too many codes", body({"visits": [{"diagnoses": ["4019"] * 1001}]})),
        ("code too long", body({"visits": [{"diagnoses": ["9" * 5000]}]})),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
        ("huge number", b'{"visits": [{}], "profile": {"age": 1' + b"0" * 5000 + b"}}"),
        ("NaN", b'{"visits": [{}], "profile": {"age": NaN}}'),
        ("oversize body", b'{"visits": [{"diagnoses": ["' + b"1" * (2 << 20) + b'"]}]}'),
        ("bad FHIR", body({"resourceType": "Bundle", "entry": [{"resource": {"x": 1}}]})),
    ]
    out = [(name, "/v1/recommend", data, ok) for name, data in cases]
    out += [
        ("wrong token", "/v1/recommend", p, {**ok, "Authorization": "Bearer wrong"}),
        ("no token", "/v1/recommend", p, {"Content-Type": "application/json"}),
        ("wrong content type", "/v1/recommend", p, {**ok, "Content-Type": "text/plain"}),
        ("bad top_k", "/v1/recommend?top_k=-5", p, ok),
        ("bad threshold", "/v1/recommend?threshold=abc", p, ok),
        ("batch too large", "/v1/recommend/batch", body({"patients": [patient] * 101}), ok),
        ("batch not a list", "/v1/recommend/batch", body({"patients": "all"}), ok),
        ("lying Content-Length", "/v1/recommend", p, {**ok, "Content-Length": "99999999"}),
    ]
    return out


def start_server(model: Path, port: int, token_file: Path) -> subprocess.Popen:
    leader = Path(sys.executable).parent / "leader"
    cmd = [str(leader), "serve", "--model", str(model), "--port", str(port)]
    cmd += ["--token-file", str(token_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            status, _ = Client(port).request("GET", "/v1/health")
            if status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy within 120 s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=1000, help="sequential latency requests")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--throughput-requests", type=int, default=4000)
    ap.add_argument("--hostile", type=int, default=1000)
    ap.add_argument("--out", type=Path, help="write a markdown report here")
    ap.add_argument("--explain", action="store_true", help="ask for explanations (?explain=true)")
    args = ap.parse_args()
    path = "/v1/recommend?explain=true" if args.explain else "/v1/recommend"

    rng = random.Random(0)
    patient = demo_patient(args.model, rng)
    body = json.dumps(patient).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        port = free_port()
        server = start_server(args.model, port, token_file)
        try:
            client = Client(port)
            for _ in range(50):  # warm-up
                status, _ = client.request("POST", path, body, headers)
                assert status == 200, status
            latencies = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                status, _ = client.request("POST", path, body, headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                assert status == 200, status

            per_client = args.throughput_requests // args.clients
            failures: list[int] = []

            def worker() -> None:
                c = Client(port)
                for _ in range(per_client):
                    status, _ = c.request("POST", path, body, headers)
                    if status != 200:
                        failures.append(status)

            threads = [threading.Thread(target=worker) for _ in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            throughput = per_client * args.clients / wall

            cases = hostile_requests(patient)
            statuses: Counter = Counter()
            by_case: dict[str, Counter] = {}
            hostile_client = Client(port)
            t_hostile = time.perf_counter()
            for i in range(args.hostile):
                name, path, data, hdrs = cases[i % len(cases)]
                try:
                    status, _ = hostile_client.request("POST", path, data, hdrs)
                except OSError:
                    status = 0  # the server closed the connection on an oversize upload
                statuses[status] += 1
                by_case.setdefault(name, Counter())[status] += 1
            hostile_s = time.perf_counter() - t_hostile
            health_status, health = Client(port).request("GET", "/v1/health")
            still_ok = health_status == 200 and json.loads(health)["status"] == "ok"
            after, _ = Client(port).request("POST", "/v1/recommend", body, headers)
        finally:
            server.terminate()
            server.wait(timeout=30)
    load_after = os.getloadavg()

    five_xx = sum(n for s, n in statuses.items() if s >= 500)
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/serve.py {' '.join(sys.argv[1:])}`",
        "",
        f"Model: `{args.model}` ({json.loads((args.model / 'manifest.json').read_text())['model']}"
        f"), patient: 3 visits, 8 diagnoses + 3 procedures each, 6 drugs on earlier visits.",
        f"Machine: {os.cpu_count()} CPUs, shared with other jobs while measuring "
        f"(1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after); "
        "client and server on the same cores. One uvicorn worker.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| latency p50 (1 client, {args.requests} requests) "
        f"| {statistics.median(latencies):.2f} ms |",
        f"| latency p99 | {percentile(latencies, 0.99):.2f} ms |",
        f"| throughput ({args.clients} clients, {per_client * args.clients} requests) "
        f"| {throughput:.0f} req/s |",
        f"| non-200 answers under load | {len(failures)} |",
        f"| hostile requests | {args.hostile} in {hostile_s:.1f} s |",
        f"| hostile → 5xx | {five_xx} |",
        f"| hostile status codes | {dict(sorted(statuses.items()))} |",
        f"| healthy after | {still_ok} (a normal request after: {after}) |",
        "",
        "Status per hostile case (0 = server closed the connection before reading the body):",
        "",
    ]
    lines += [f"- {name}: {dict(c)}" for name, c in by_case.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if five_xx == 0 and still_ok and after == 200 and not failures else 1


if __name__ == "__main__":
    sys.exit(main())

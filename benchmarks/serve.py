"""Benchmark `leader serve`: latency, throughput, and robustness against hostile requests.

Starts `leader serve` on a free loopback port (with a bearer token, so wrong tokens are tested)
and, with a bounded number of requests:

1. single-client latency of POST /v1/recommend (p50 / p99 over ``--requests``);
2. throughput with ``--clients`` concurrent clients (keep-alive connections, one thread each);
3. ``--hostile`` malformed or hostile requests (invalid JSON, wrong types, huge lists, unknown
   fields, oversize bodies, deep nesting, wrong or missing token): counts status codes; any 5xx
   is a failure; then checks that the server is still healthy.

With ``--soak N`` it runs a hostile soak instead: N requests from ``--clients`` concurrent
clients, half valid (JSON patients and FHIR Bundles) and half hostile (the cases above plus
Unicode-digit ages, deeply nested FHIR, unknown query parameters ...), while ``--slow`` connections
dribble header bytes and as many sit idle, and a monitor polls ``/v1/health`` every 0.25 s.
Reports requests/s, p50/p99, 5xx (goal 0), the server's RSS before and after, health latency
during the run, and how soon the slow and idle connections were closed.

    .venv/bin/python benchmarks/serve.py --model MODEL_DIR [--out benchmarks/results/serve.md]
    .venv/bin/python benchmarks/serve.py --model MODEL_DIR --soak 20000 --clients 16 \
        --out benchmarks/results/serve-soak.md

Exits non-zero if any request got a 5xx or the server is unhealthy afterwards. All traffic
goes to a server this script starts on a free loopback port, and is bounded in count and time.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOKEN = "benchmark-token-0123456789abcdef"



def run_all(threads: list[threading.Thread]) -> float:
    """Start the client threads together, wait for all; their wall-clock seconds."""
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0

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


def fhir_patient(model_dir: Path, rng: random.Random) -> dict:
    """A FHIR Bundle with two encounters coded from the bundle's vocabulary."""
    vocab = json.loads((model_dir / "vocab.json").read_text())
    systems = {"icd9": "http://hl7.org/fhir/sid/icd-9-cm", "icd10": "http://hl7.org/fhir/sid/icd-10-cm"}
    dx = [d["code"] for d in vocab["diagnoses"] if d["code"].split(":")[0] in systems]
    entries = [{"resource": {"resourceType": "Patient", "id": "p1", "gender": "female",
                             "birthDate": "1950-06-15"}}]
    for e, start in enumerate(["2020-01-01T08:00:00Z", "2021-02-01T08:00:00Z"]):
        entries.append({"resource": {
            "resourceType": "Encounter", "id": f"e{e}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "period": {"start": start}}})
        for code in rng.sample(dx, min(6, len(dx))):
            version, bare = code.split(":", 1)
            entries.append({"resource": {
                "resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                "encounter": {"reference": f"Encounter/e{e}"},
                "code": {"coding": [{"system": systems[version], "code": bare}]}}})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def soak_requests(patient: dict, bundle: dict) -> tuple[list, list]:
    """(valid, hostile) requests as (name, method, path, body, headers) for the soak."""
    ok = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    fhir = {**ok, "Content-Type": "application/fhir+json"}
    p = json.dumps(patient).encode()
    valid = [
        ("patient", "POST", "/v1/recommend", p, ok),
        ("patient top_k", "POST", "/v1/recommend?top_k=5", p, ok),
        ("FHIR bundle", "POST", "/v1/recommend", json.dumps(bundle).encode(), fhir),
        ("batch of 4", "POST", "/v1/recommend/batch",
         json.dumps({"patients": [patient] * 4}).encode(), ok),
        ("vocab search", "GET", "/v1/vocab?q=hyper&limit=5", None, ok),
    ]
    hostile = [(n, "POST", path, b, h) for n, path, b, h in hostile_requests(patient)]
    deep: dict = {"url": "http://x", "valueString": "v"}
    for _ in range(122):
        deep = {"url": "http://x", "extension": [deep]}
    deep_bundle = json.loads(json.dumps(bundle))
    deep_bundle["entry"][0]["resource"]["extension"] = [deep]
    v0 = patient["visits"][-1]
    for age in ["²", "①", "٣", "200", 200, -1]:
        body = json.dumps({"profile": {"age": age}, "visits": [v0]}).encode()
        hostile.append((f"age {age!r}", "POST", "/v1/recommend", body, ok))
        batch = json.dumps({"patients": [patient, {"profile": {"age": age}, "visits": [v0]}]})
        hostile.append((f"batch age {age!r}", "POST", "/v1/recommend/batch", batch.encode(), ok))
    hostile += [
        ("deep FHIR extension", "POST", "/v1/recommend", json.dumps(deep_bundle).encode(), fhir),
        ("FHIR born after", "POST", "/v1/recommend", json.dumps({**bundle, "entry": [
            {"resource": {**bundle["entry"][0]["resource"], "birthDate": "2999-01-01"}},
            *bundle["entry"][1:]]}).encode(), fhir),
        ("FHIR bad type", "POST", "/v1/recommend",
         json.dumps({**bundle, "type": "nonsense"}).encode(), fhir),
        ("unknown query", "POST", "/v1/recommend?debug=1", p, ok),
        ("vocab bad kind", "GET", "/v1/vocab?kind=labs", None, ok),
        ("model card no token", "GET", "/v1/model", None, {}),
        ("unknown path", "GET", "/v1/admin", None, ok),
    ]
    return valid, hostile


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def slow_connections(port: int, n: int, stop: threading.Event, closed_after: list) -> None:
    """``n`` connections dribbling a header byte every 0.5 s and ``n`` idle ones; records how
    long the server took to close each (None: still open when the soak ended)."""
    conns = []
    for i in range(2 * n):
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        if i % 2:
            c.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        conns.append([c, time.perf_counter(), None, bool(i % 2)])
    while not stop.is_set() and any(x[2] is None for x in conns):
        for x in conns:
            c, t0, done, dribble = x
            if done is not None:
                continue
            try:
                if c.recv(4096) == b"":
                    x[2] = time.perf_counter() - t0
                    continue
            except BlockingIOError:
                pass
            except OSError:
                x[2] = time.perf_counter() - t0
                continue
            if dribble:
                try:
                    c.send(b"a")
                except OSError:
                    x[2] = time.perf_counter() - t0
        stop.wait(0.5)
    for c, _, done, _ in conns:
        closed_after.append(done)
        c.close()


def soak(args, model: Path, port: int, server: subprocess.Popen) -> tuple[list[str], bool]:
    rng = random.Random(0)
    patient = demo_patient(model, rng)
    valid, hostile = soak_requests(patient, fhir_patient(model, rng))
    warm = Client(port)
    for name, method, path, body, hdrs in valid * 20:
        status, _ = warm.request(method, path, body, hdrs)
        assert status == 200, (name, status)
    rss_before = rss_kib(server.pid)
    per_client = args.soak // args.clients
    results: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        r = random.Random(seed)
        c = Client(port)
        mine = []
        for _ in range(per_client):
            name, method, path, body, hdrs = r.choice(valid if r.random() < 0.5 else hostile)
            t0 = time.perf_counter()
            try:
                status, _ = c.request(method, path, body, hdrs)
            except OSError:
                status = 0  # closed before the body was read (oversize upload)
            mine.append((name, status, (time.perf_counter() - t0) * 1000))
        with lock:
            results.extend(mine)

    stop = threading.Event()
    health: list[tuple[int, float]] = []

    def monitor() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status, _ = Client(port).request("GET", "/v1/health")
            except OSError:
                status = 0
            health.append((status, (time.perf_counter() - t0) * 1000))
            stop.wait(0.25)

    closed_after: list = []
    side = [threading.Thread(target=monitor),
            threading.Thread(target=slow_connections, args=(port, args.slow, stop, closed_after))]
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for t in side:
        t.start()
    wall = run_all(threads)
    stop.set()
    for t in side:
        t.join()
    rss_after = rss_kib(server.pid)
    status, data = Client(port).request("GET", "/v1/health")
    healthy = status == 200 and json.loads(data)["status"] == "ok"

    latencies = [ms for _, _, ms in results]
    statuses = Counter(s for _, s, _ in results)
    five_xx = sum(n for s, n in statuses.items() if s >= 500)
    by_case: dict[str, Counter] = {}
    for name, s, _ in results:
        by_case.setdefault(name, Counter())[s] += 1
    valid_names = {v[0] for v in valid}
    valid_bad = sum(n for name, c in by_case.items() if name in valid_names
                    for s, n in c.items() if s != 200)
    h_ms = [ms for _, ms in health]
    h_bad = sum(1 for s, _ in health if s != 200)
    closed = [x for x in closed_after if x is not None]
    lines = [
        f"| requests | {len(results)} from {args.clients} clients in {wall:.1f} s |",
        f"| throughput | {len(results) / wall:.0f} req/s |",
        f"| latency p50 / p99 (all requests) | {statistics.median(latencies):.2f} / "
        f"{percentile(latencies, 0.99):.2f} ms |",
        f"| 5xx | {five_xx} |",
        f"| valid requests not answered 200 | {valid_bad} |",
        f"| status codes | {dict(sorted(statuses.items()))} |",
        f"| server RSS before / after | {rss_before / 1024:.1f} / {rss_after / 1024:.1f} MiB |",
        f"| /v1/health during the run | {len(health)} polls, {h_bad} not 200, p50 "
        f"{statistics.median(h_ms):.1f} ms, p99 {percentile(h_ms, 0.99):.1f} ms, max "
        f"{max(h_ms):.1f} ms |",
        f"| slow + idle connections closed by the server | {len(closed)} of {len(closed_after)}"
        + (f", after {min(closed):.1f}–{max(closed):.1f} s |" if closed else " |"),
        f"| healthy after | {healthy} |",
        "",
        "Status per case:",
        "",
    ]
    lines += [f"- {name}: {dict(sorted(c.items()))}" for name, c in sorted(by_case.items())]
    ok = five_xx == 0 and healthy and h_bad == 0 and valid_bad == 0
    ok = ok and len(closed) == len(closed_after)
    return lines, ok


@contextmanager
def serving(model: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """`leader serve` for ``model`` on a free loopback port with the bearer token, healthy
    before this yields (port, process); stopped afterwards."""
    leader = Path(sys.executable).parent / "leader"
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        port = free_port()
        cmd = [str(leader), "serve", "--model", str(model), "--port", str(port),
               "--token-file", str(token_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_healthy(proc, port)
            yield port, proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_healthy(proc: subprocess.Popen, port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            status, _ = Client(port).request("GET", "/v1/health")
            if status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server did not become healthy within {seconds:g} s")


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
    ap.add_argument("--soak", type=int, default=0, help="run the hostile soak of N requests")
    ap.add_argument("--slow", type=int, default=50,
                    help="soak: dribbling connections (and as many idle ones)")
    ap.add_argument("--out", type=Path, help="write a markdown report here")
    ap.add_argument("--explain", action="store_true", help="ask for explanations (?explain=true)")
    args = ap.parse_args()
    if args.soak:
        return main_soak(args)
    path = "/v1/recommend?explain=true" if args.explain else "/v1/recommend"

    rng = random.Random(0)
    patient = demo_patient(args.model, rng)
    body = json.dumps(patient).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    load_before = os.getloadavg()
    with serving(args.model) as (port, server):
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
        wall = run_all(threads)
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


def main_soak(args) -> int:
    load_before = os.getloadavg()
    with serving(args.model) as (port, server):
        table, ok = soak(args, args.model, port, server)
    load_after = os.getloadavg()
    model = json.loads((args.model / "manifest.json").read_text())["model"]
    lines = [
        "# Serving benchmark: hostile soak",
        "",
        f"Command: `.venv/bin/python benchmarks/serve.py {' '.join(sys.argv[1:])}`",
        "",
        f"Model: `{args.model}` ({model}). Half the requests valid (JSON patient, FHIR Bundle, "
        "batch of 4, vocab search), half hostile; "
        f"{args.slow} dribbling and {args.slow} idle connections held open meanwhile.",
        f"Machine: {os.cpu_count()} CPUs, shared with other jobs while measuring "
        f"(1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after); "
        "client and server on the same cores. One uvicorn worker.",
        "",
        "| measure | value |",
        "|---|---|",
        *table,
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

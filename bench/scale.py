"""Scale: one operator against N kwok nodes, 30 pods each, each node reporting every 5 s.

A local control plane (etcd + kube-apiserver, kopeck.localcluster) holds N fake Nodes and
30 x N Pods in N/2 namespaces that kwok (built from the Go module proxy) keeps Ready and
Running without kubelets. Each namespace holds 60 pods: 3 Deployments (42 pods through
their ReplicaSets), 1 StatefulSet (9), 2 Jobs (6) and 1 CronJob (3, through its Job), and
carries a team label that one of min(100, N/2) CostPolicies selects. The bench creates the
owner chain itself (Deployment -> ReplicaSet -> Pod, CronJob -> Job -> Pod, Pods bound to
nodes), so no controller-manager or scheduler runs: they would only make the same objects
at their default 20 requests/s while eating the two cores the operator needs.

A report generator stands in for N probes: every node posts a report of its pods every 5 s
of real time over HTTPS to the operator's ingest (its own bootId, seq 1, 2, ...; usage that
grows like cgroup counter deltas do), one in flight per node and resent until acknowledged,
as the probe does. The probe token is one TokenRequest token of the operator's probe
ServiceAccount: OperatorProcess passes ``--probe-audience "" --no-require-node-binding``, so
one token serves every node (production binds a token per node; not measured here).

Ground truth is what was acknowledged: at the end the bench sums Allocation status usage
per workload and compares it with what it sent. Measured per point: operator RSS and CPU
(/proc/<pid>), ack p50/p99, lag between a report and its usage in status (polled each
second on one namespace), apiserver writes/s to cost.kopeck.io (the operator is its only
writer during the window; from the apiserver's apiserver_request_total), CostPolicy status
cycle (time between changes of status.spent), etcd db growth (etcd_mvcc_db_total_size_in_bytes)
and the Allocations' bytes as stored in etcd (read by range from etcd itself).

    .venv/bin/python bench/scale.py [--nodes 100,300] [--seconds 120] [--warmup 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import random
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
from tests.support.operator import (
    kubectl_for,
    percentile,
    probe_token,
    running_operator,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
PODS_PER_NODE = 30
INTERVAL_S = 5.0
RATE_CARD = {"cpuCoreHour": 0.036, "memoryGiBHour": 0.0045}
# per namespace of 60 pods: (kind, replicas) in realistic proportions
NAMESPACE_MIX = (("Deployment", 20), ("Deployment", 12), ("Deployment", 10),
                 ("StatefulSet", 9), ("Job", 3), ("Job", 3), ("CronJob", 3))
TEAM_LABEL = "bench.kopeck.io/team"


# -- the apiserver, straight ---------------------------------------------------------------
@dataclass
class Api:
    """A few REST calls as the cluster admin, many at once (setup and polling)."""

    server: str
    ssl: ssl.SSLContext
    session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=32))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        for attempt in range(8):
            async with self.session.request(method, self.server + path, json=body) as resp:
                data = await resp.read()
                if resp.status < 300:
                    return json.loads(data) if data else None
                if resp.status == 409 and method == "POST":
                    return None  # already there (a retried create)
                if resp.status in (429, 500, 503, 504) or (
                        resp.status == 404 and b"serviceaccount" in data):
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        raise RuntimeError(f"{method} {path}: gave up after retries")

    async def text(self, path: str) -> str:
        assert self.session is not None
        async with self.session.get(self.server + path) as resp:
            return await resp.text()


async def bounded(coros: list[Any], limit: int = 24) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


# -- the cluster's contents ----------------------------------------------------------------
@dataclass
class PodRec:
    uid: str
    namespace: str
    name: str
    node: str
    workload: tuple[str, str, str]  # namespace, kind, name
    cpu_cores: float  # mean usage
    working_set: int
    container: str = "app"


def node_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name,
                                "topology.kubernetes.io/zone": "zone-a"}},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "nodeInfo": {"kubeletVersion": "fake", "architecture": "amd64",
                                "operatingSystem": "linux"}},
    }


def pod_template(app: str, cpu: str, memory: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": app}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": {"cpu": cpu,
                                                                "memory": memory}}}]}}


def policy(name: str, team: str) -> dict[str, Any]:
    return {"apiVersion": "cost.kopeck.io/v1alpha1", "kind": "CostPolicy",
            "metadata": {"name": name},
            "spec": {"scope": {"namespaceSelector": {"matchLabels": {TEAM_LABEL: team}}},
                     "pricing": {"rateCard": RATE_CARD}}}


def owner(obj: dict[str, Any], controller: bool = True) -> list[dict[str, Any]]:
    return [{"apiVersion": obj["apiVersion"], "kind": obj["kind"],
             "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
             "controller": controller, "blockOwnerDeletion": True}]


async def populate(api: Api, nodes: int, rng: random.Random) -> tuple[list[str], list[PodRec]]:
    """Nodes, namespaces, policies, owners and pods bound round-robin to nodes."""
    node_names = [f"kwok-node-{i:04d}" for i in range(nodes)]
    await bounded([api.call("POST", "/api/v1/nodes", node_manifest(n)) for n in node_names])
    namespaces = [f"team-{i:03d}" for i in range(max(1, nodes // 2))]
    teams = max(1, min(100, nodes // 2))
    await bounded([api.call("POST", "/api/v1/namespaces", {
        "metadata": {"name": ns, "labels": {TEAM_LABEL: f"t{i % teams:03d}"}}})
        for i, ns in enumerate(namespaces)])
    await bounded([api.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                            {"metadata": {"name": "default"}}) for ns in namespaces])
    await bounded([api.call("POST", "/apis/cost.kopeck.io/v1alpha1/costpolicies",
                            policy(f"bench-t{t:03d}", f"t{t:03d}")) for t in range(teams)])

    pod_bodies: list[tuple[str, dict[str, Any], tuple[str, str, str], float, int]] = []

    async def namespace(ns: str) -> None:
        for w, (kind, replicas) in enumerate(NAMESPACE_MIX):
            cpu_m = rng.choice((100, 250, 500, 1000))
            mem_mi = rng.choice((128, 256, 512, 1024))
            app = f"{kind.lower()}-{w}"
            tmpl = pod_template(app, f"{cpu_m}m", f"{mem_mi}Mi")
            sel = {"matchLabels": {"app": app}}
            if kind == "Deployment":
                dep = await api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", {
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
                    "spec": {"replicas": replicas, "selector": sel, "template": tmpl}})
                rs = await api.call("POST", f"/apis/apps/v1/namespaces/{ns}/replicasets", {
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": f"{app}-5d9c7b", "ownerReferences": owner(dep)},
                    "spec": {"replicas": replicas, "selector": sel, "template": tmpl}})
                parent, workload = rs, (ns, "Deployment", app)
            elif kind == "StatefulSet":
                parent = await api.call("POST", f"/apis/apps/v1/namespaces/{ns}/statefulsets", {
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": app},
                    "spec": {"replicas": replicas, "selector": sel, "serviceName": app,
                             "template": tmpl}})
                workload = (ns, "StatefulSet", app)
            else:
                job_tmpl = json.loads(json.dumps(tmpl))
                job_tmpl["spec"]["restartPolicy"] = "Never"
                job_spec = {"parallelism": replicas, "completions": replicas,
                            "template": job_tmpl}
                meta: dict[str, Any] = {"name": app}
                workload = (ns, "Job", app)
                if kind == "CronJob":
                    cron = await api.call("POST", f"/apis/batch/v1/namespaces/{ns}/cronjobs", {
                        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": app},
                        "spec": {"schedule": "0 * * * *",
                                 "jobTemplate": {"spec": job_spec}}})
                    meta = {"name": f"{app}-29000000", "ownerReferences": owner(cron)}
                    workload = (ns, "CronJob", app)
                parent = await api.call("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
                    "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                    "spec": job_spec})
                tmpl = json.loads(json.dumps(parent["spec"]["template"]))
            for r in range(replicas):
                body = json.loads(json.dumps(tmpl))
                body["metadata"]["name"] = (f"{app}-{r}" if kind == "StatefulSet"
                                            else f"{parent['metadata']['name']}-{r:03d}x")
                body["metadata"]["ownerReferences"] = owner(parent)
                usage = cpu_m / 1000 * rng.uniform(0.05, 0.9)
                ws = int(mem_mi * 2**20 * rng.uniform(0.2, 0.9))
                pod_bodies.append((ns, body, workload, usage, ws))

    await bounded([namespace(ns) for ns in namespaces], limit=8)
    for i, (_ns, body, *_rest) in enumerate(pod_bodies):
        body["spec"]["nodeName"] = node_names[i % nodes]
    created = await bounded([api.call("POST", f"/api/v1/namespaces/{ns}/pods",
                                      {"apiVersion": "v1", "kind": "Pod", **body})
                             for ns, body, *_ in pod_bodies], limit=32)
    pods = [PodRec(uid=p["metadata"]["uid"], namespace=ns, name=p["metadata"]["name"],
                   node=p["spec"]["nodeName"], workload=w, cpu_cores=u, working_set=ws)
            for p, (ns, _b, w, u, ws) in zip(created, pod_bodies, strict=True)]
    return node_names, pods


async def wait_running(api: Api, want: int, timeout: float,
                       kwok: subprocess.Popen[bytes]) -> float:
    """Until kwok has every pod Running (seconds waited)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if kwok.poll() is not None:
            raise RuntimeError(f"kwok exited with {kwok.returncode}; see its kwok.log")
        # a field-selected list carries no remainingItemCount: count the items
        lst = await api.call("GET", "/api/v1/pods?fieldSelector=status.phase%3DRunning")
        if len(lst["items"]) >= want:
            return time.monotonic() - t0
        await asyncio.sleep(5)
    raise TimeoutError(f"kwok did not make {want} pods Running in {timeout:.0f}s")


# -- the report generator ------------------------------------------------------------------
@dataclass
class Truth:
    cpu: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    mem: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    net: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    # per workload (send time, cumulative cpu after this report) for the lag probe
    timeline: dict[tuple[str, str, str], list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))


def wire_time(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def drive(url: str, ca: Path, token: str, nodes: list[str], pods: list[PodRec],
                stop: asyncio.Event, truth: Truth, acks: list[tuple[float, float]],
                codes: dict[int, int], backlog: dict[str, float], rng: random.Random,
                dups: list[int]) -> None:
    """Every node: a report of its pods every 5 s, resent until acknowledged."""
    ctx = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    by_node: dict[str, list[PodRec]] = defaultdict(list)
    for p in pods:
        by_node[p.node].append(p)
    conn = aiohttp.TCPConnector(ssl=ctx, limit=0)
    async with aiohttp.ClientSession(connector=conn, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def node(name: str) -> None:
            boot = str(uuid.uuid4())
            mine = by_node[name]
            await asyncio.sleep(rng.uniform(0, INTERVAL_S))  # probes are not in phase
            end = dt.datetime.now(dt.UTC).replace(microsecond=0)
            seq = 0
            while not stop.is_set():
                seq += 1
                start, end = end, end + dt.timedelta(seconds=INTERVAL_S)
                wait = (end - dt.datetime.now(dt.UTC)).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
                if stop.is_set():
                    return
                entries = []
                for p in mine:
                    cpu = round(p.cpu_cores * INTERVAL_S * rng.uniform(0.7, 1.3), 6)
                    ws = int(p.working_set * rng.uniform(0.97, 1.03))
                    net = rng.randrange(0, 200_000)
                    entries.append((p, cpu, ws, net, {
                        "uid": p.uid, "namespace": p.namespace, "name": p.name,
                        "cpuCoreSeconds": cpu, "memoryWorkingSetBytes": ws,
                        "memoryByteSeconds": ws * INTERVAL_S, "seconds": INTERVAL_S,
                        "containers": [{"name": p.container, "cpuCoreSeconds": cpu,
                                        "memoryWorkingSetBytes": ws}],
                        "network": [{"trafficClass": "internet", "direction": "tx",
                                     "bytes": net}]}))
                body = json.dumps({
                    "node": name, "bootId": boot, "seq": seq,
                    "intervalStart": wire_time(start), "intervalEnd": wire_time(end),
                    "nodeInfo": {"cpuCores": 32, "memoryBytes": 128 * 2**30},
                    "pods": [e[4] for e in entries]}).encode()
                while True:  # resend until acknowledged, as the probe's buffer does
                    t0 = time.perf_counter()
                    sent_at = time.monotonic()
                    try:
                        async with session.post(url, data=body) as resp:
                            ack = await resp.json(content_type=None)
                            status = resp.status
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        status, ack = 0, {}
                    codes[status] = codes.get(status, 0) + 1
                    if status == 200:
                        break
                    await asyncio.sleep(1)
                acks.append((time.monotonic(), (time.perf_counter() - t0) * 1000))
                backlog[name] = (dt.datetime.now(dt.UTC) - end).total_seconds()
                # in the ledger exactly once, whichever attempt folded it: a resend after a
                # 503 (folded, not yet durable) is acked as a duplicate
                dups[0] += bool(ack.get("duplicate"))
                for p, cpu, ws, net, _e in entries:
                    w = p.workload
                    truth.cpu[w] += cpu
                    truth.mem[w] += ws * INTERVAL_S
                    truth.net[w] += net
                    truth.timeline[w].append((sent_at, truth.cpu[w]))

        await asyncio.gather(*(node(n) for n in nodes))


def workload_of(alloc: dict[str, Any]) -> tuple[str, str, str] | None:
    ref = alloc["spec"]["workloadRef"]
    if ref.get("kind") == "Namespace":
        return None
    return (alloc["metadata"]["namespace"], ref["kind"], ref["name"])


async def watch_lag(api: Api, ns: str, truth: Truth, stop: asyncio.Event,
                    lags: list[float]) -> None:
    """Each second, list one namespace's Allocations; a report's usage counts as visible
    once its workload's status reaches the cumulative usage sent with it."""
    seen: dict[tuple[str, str, str], int] = defaultdict(int)
    while not stop.is_set():
        await asyncio.sleep(1)
        try:
            items = (await api.call(
                "GET", f"/apis/cost.kopeck.io/v1alpha1/namespaces/{ns}/allocations"))["items"]
        except (RuntimeError, aiohttp.ClientError):
            continue
        now = time.monotonic()
        status_cpu: dict[tuple[str, str, str], float] = defaultdict(float)
        for a in items:
            w = workload_of(a)
            if w is not None:
                status_cpu[w] += ((a.get("status") or {}).get("usage") or {}).get(
                    "cpuCoreSeconds", 0.0)
        for w, line in truth.timeline.items():
            if w[0] != ns:
                continue
            i = seen[w]
            while i < len(line) and line[i][1] <= status_cpu.get(w, 0.0) * (1 + 1e-9) + 1e-9:
                lags.append(now - line[i][0])
                i += 1
            seen[w] = i


async def watch_policies(api: Api, stop: asyncio.Event, cycles: list[float]) -> None:
    """Each second, the CostPolicies' status.spent; a change ends a status cycle."""
    last: dict[str, tuple[str, float]] = {}
    while not stop.is_set():
        await asyncio.sleep(1)
        try:
            items = (await api.call("GET", "/apis/cost.kopeck.io/v1alpha1/costpolicies"
                                           "?limit=10"))["items"]
        except (RuntimeError, aiohttp.ClientError):
            continue
        now = time.monotonic()
        for p in items:
            spent = str((p.get("status") or {}).get("spent"))
            name = p["metadata"]["name"]
            prev = last.get(name)
            if prev is None or prev[0] != spent:
                if prev is not None and prev[0] != "None":
                    cycles.append(now - prev[1])
                last[name] = (spent, now)


# -- measurements from /proc, the apiserver and etcd ---------------------------------------
def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


WRITE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<v>\S+)$')


def kopeck_writes(metrics_text: str) -> float:
    """PATCH/POST/PUT/DELETE requests to cost.kopeck.io resources the apiserver served."""
    total = 0.0
    for line in metrics_text.splitlines():
        m = WRITE.match(line)
        if m is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("group") == "cost.kopeck.io" and labels.get("verb") in (
                "PATCH", "POST", "PUT", "DELETE", "APPLY"):
            total += float(m["v"])
    return total


def etcd_db_bytes(etcd_url: str, in_use: bool = False) -> int:
    import urllib.request

    name = "etcd_mvcc_db_total_size_in_use_in_bytes " if in_use else (
        "etcd_mvcc_db_total_size_in_bytes ")
    with urllib.request.urlopen(f"{etcd_url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                return int(float(line.split()[1]))
    return 0


def etcd_prefix_bytes(etcd_url: str, prefix: str) -> tuple[int, int]:
    """(keys, bytes of key + value) under a prefix, as etcd stores them."""
    import urllib.request

    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    req = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                      "range_end": base64.b64encode(end.encode()).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(
            f"{etcd_url}/v3/kv/range", data=req, method="POST"), timeout=60) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    size = sum(len(base64.b64decode(kv["key"])) + len(base64.b64decode(kv.get("value", "")))
               for kv in kvs)
    return len(kvs), size


# -- one point -----------------------------------------------------------------------------
def start_kwok(kubeconfig: Path, workdir: Path) -> subprocess.Popen[bytes]:
    from kopeck.localcluster.cluster import free_port
    from kopeck.localcluster.kwok import build_kwok, kwok_stages

    kwok = build_kwok()
    config = workdir / "kwok-stages.yaml"
    config.write_text(kwok_stages())
    log = (workdir / "kwok.log").open("ab")
    return subprocess.Popen(
        [str(kwok), f"--kubeconfig={kubeconfig}", f"--config={config}",
         "--manage-all-nodes=true",
         f"--node-port={free_port()}", f"--server-address=127.0.0.1:{free_port()}",
         "--cidr=10.0.0.1/16", "--node-ip=10.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure(cluster: Any, op: Any, token: str, nodes: list[str], pods: list[PodRec],
                  seconds: float, warmup: float, seed: int) -> dict[str, Any]:
    from kopeck.localcluster.cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    etcd_url = f"http://127.0.0.1:{cluster.ports.etcd_client}"
    ctx = cluster._apiserver_ssl()  # the admin's client certificate
    rng = random.Random(seed)
    truth, acks, codes, backlog = Truth(), [], {}, {}
    dups = [0]
    lags: list[float] = []
    cycles: list[float] = []
    stop = asyncio.Event()
    async with Api(cluster.server, ctx) as api:
        gen = asyncio.create_task(drive(op.ingest_url, op.ca_file, token, nodes, pods, stop,
                                        truth, acks, codes, backlog, rng, dups))
        lag_ns = pods[0].namespace
        watchers = [asyncio.create_task(watch_lag(api, lag_ns, truth, stop, lags)),
                    asyncio.create_task(watch_policies(api, stop, cycles))]
        await asyncio.sleep(warmup)
        pid = op.proc.pid
        others = {c.name: c.pid for c in cluster.components}
        others["bench"] = os.getpid()
        t0, cpu0 = time.monotonic(), proc_cpu_seconds(pid)
        others0 = {k: proc_cpu_seconds(v) for k, v in others.items()}
        load0 = os.getloadavg()[0]
        w0, db0 = kopeck_writes(await api.text("/metrics")), etcd_db_bytes(etcd_url)
        lag0, cyc0, acks0 = len(lags), len(cycles), len(acks)
        rss: list[float] = []
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(5)
            rss.append(proc_rss_mib(pid))
            if gen.done():
                break
        elapsed = time.monotonic() - t0
        cpu = (proc_cpu_seconds(pid) - cpu0) / elapsed
        others_cpu = {k: round((proc_cpu_seconds(v) - others0[k]) / elapsed, 3)
                      for k, v in others.items()}
        load1 = os.getloadavg()[0]
        writes = (kopeck_writes(await api.text("/metrics")) - w0) / elapsed
        db1 = etcd_db_bytes(etcd_url)
        window_acks = [ms for _t, ms in acks[acks0:]]
        window_backlog = max(backlog.values()) if backlog else None
        stop.set()
        await asyncio.wait_for(gen, timeout=120)
        for w in watchers:
            await w
        # ground truth: every acknowledged report is in the ledger
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            page = await api.call("GET", "/apis/cost.kopeck.io/v1alpha1/allocations?limit=500"
                                  + (f"&continue={cont}" if cont else ""))
            items += page["items"]
            cont = page["metadata"].get("continue", "")
            if not cont:
                break
    ledger_cpu: dict[tuple[str, str, str], float] = defaultdict(float)
    ledger_mem: dict[tuple[str, str, str], float] = defaultdict(float)
    ledger_net: dict[tuple[str, str, str], int] = defaultdict(int)
    cost_total = 0.0
    for a in items:
        w = workload_of(a)
        st = a.get("status") or {}
        if w is None:
            continue
        usage = st.get("usage") or {}
        ledger_cpu[w] += usage.get("cpuCoreSeconds", 0.0)
        ledger_mem[w] += usage.get("memoryByteSeconds", 0.0)
        ledger_net[w] += (usage.get("networkBytes") or {}).get("internet", 0)
        cost_total += float((st.get("cost") or {}).get("total", 0))

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) + 1e-6

    mismatched = [w for w in set(truth.cpu) | set(ledger_cpu)
                  if not (close(truth.cpu.get(w, 0), ledger_cpu.get(w, 0))
                          and close(truth.mem.get(w, 0), ledger_mem.get(w, 0))
                          and truth.net.get(w, 0) == ledger_net.get(w, 0))]
    alloc_keys, alloc_bytes = etcd_prefix_bytes(etcd_url, "/registry/cost.kopeck.io/allocations/")
    per_record = alloc_bytes / max(1, alloc_keys)
    workloads = len(truth.cpu)
    return {
        "nodes": len(nodes),
        "pods": len(pods),
        "namespaces": len({p.namespace for p in pods}),
        "workloads": workloads,
        "seconds": round(elapsed, 1),
        "reports_acked": len(window_acks),
        "reports_per_s": round(len(window_acks) / elapsed, 2),
        "reports_per_s_offered": round(len(nodes) / INTERVAL_S, 2),
        "rss_mib": round(max(rss), 1) if rss else None,
        "cpu_cores": round(cpu, 3),
        "other_cpu_cores": others_cpu,
        "machine_load_1m": [round(load0, 2), round(load1, 2)],
        "ack_p50_ms": round(statistics.median(window_acks), 1) if window_acks else None,
        "ack_p99_ms": round(percentile(window_acks, 99), 1) if window_acks else None,
        "lag_p50_s": round(statistics.median(lags[lag0:]), 2) if lags[lag0:] else None,
        "lag_p99_s": round(percentile(lags[lag0:], 99), 2) if lags[lag0:] else None,
        "backlog_max_s": round(window_backlog, 1) if window_backlog is not None else None,
        "apiserver_writes_per_s": round(writes, 2),
        "policy_status_cycle_p50_s": (round(statistics.median(cycles[cyc0:]), 2)
                                      if cycles[cyc0:] else None),
        "policy_status_cycle_p99_s": (round(percentile(cycles[cyc0:], 99), 2)
                                      if cycles[cyc0:] else None),
        "etcd_db_growth_bytes": db1 - db0,
        "etcd_bytes_per_day": round((db1 - db0) / elapsed * 86400),
        "etcd_db_bytes_end": db1,
        "etcd_db_in_use_bytes_end": etcd_db_bytes(etcd_url, in_use=True),
        "allocation_periods": sorted({a["spec"]["period"]["name"] for a in items}),
        "allocations": alloc_keys,
        "allocation_bytes_stored": alloc_bytes,
        "allocation_bytes_per_record": round(per_record),
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "acked_as_duplicate": dups[0],
        "ledger_cost_total_usd": round(cost_total, 6),
        "ground_truth_workloads": workloads,
        "ground_truth_mismatched": len(mismatched),
        "ground_truth_matched": not mismatched and workloads > 0,
        "ground_truth_examples": [
            {"workload": "/".join(w), "sent_cpu": truth.cpu.get(w, 0),
             "ledger_cpu": ledger_cpu.get(w, 0)} for w in sorted(mismatched)[:3]],
    }


def run_point(nodes: int, seconds: float, warmup: float, workdir: Path) -> dict[str, Any]:
    from kopeck.localcluster.build import ensure_binaries
    from kopeck.localcluster.cluster import LocalCluster
    from kopeck.localcluster.kwok import build_kwok

    ensure_binaries()
    build_kwok()
    workdir.mkdir(parents=True, exist_ok=True)
    t_setup = time.monotonic()
    with LocalCluster(workdir / "cluster", tie_to_parent=True, with_controller_manager=False,
                      with_scheduler=False) as cluster:
        kubectl = kubectl_for(cluster.kubeconfig)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        kwok = start_kwok(cluster.kubeconfig, workdir)
        try:
            rng = random.Random(nodes)

            async def setup() -> tuple[list[str], list[PodRec], float]:
                async with Api(cluster.server, cluster._apiserver_ssl()) as api:
                    names, pods = await populate(api, nodes, rng)
                    waited = await wait_running(api, len(pods), 600 + nodes, kwok)
                return names, pods, waited

            names, pods, waited = asyncio.run(setup())
            print(f"    {nodes} nodes, {len(pods)} pods Running "
                  f"({time.monotonic() - t_setup:.0f}s setup)", flush=True)
            with running_operator(kubectl, cluster.kubeconfig, workdir / "op") as op:
                kubectl("create", "serviceaccount", "default", "-n", op.namespace, check=False)
                primed = time.monotonic() - t_setup
                token = probe_token(kubectl, op)
                point = asyncio.run(measure(cluster, op, token, names, pods, seconds, warmup,
                                            seed=nodes))
                point["operator_ready_after_setup_s"] = round(primed, 1)
                point["kwok_running_wait_s"] = round(waited, 1)
                point["operator_log_errors"] = sum(
                    1 for ln in (op.log_path.read_text(errors="replace").splitlines()
                                 if op.log_path else []) if "ERROR" in ln)
        finally:
            stop_pid(kwok)
    return point


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="100,300",
                        help="comma-separated node counts, one point each")
    parser.add_argument("--seconds", type=float, default=120, help="measured window")
    parser.add_argument("--warmup", type=float, default=30, help="load before measuring")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    def terminated(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind: operator, kwok and cluster are stopped

    signal.signal(signal.SIGTERM, terminated)
    started = time.time()
    points: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="kopeck-bench-scale-"))
    try:
        for n in (int(x) for x in args.nodes.split(",")):
            print(f"==> {n} nodes", flush=True)
            point = run_point(n, args.seconds, args.warmup, root / f"n{n}")
            print(json.dumps({k: point[k] for k in (
                "nodes", "pods", "rss_mib", "cpu_cores", "ack_p99_ms", "lag_p99_s",
                "apiserver_writes_per_s", "etcd_bytes_per_day", "ground_truth_matched")}),
                flush=True)
            points.append(point)
            write_results(args.out, points, started)  # a later point may not finish
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0 if points and all(p["ground_truth_matched"] for p in points) else 1


def write_results(path: Path, points: list[dict[str, Any]], started: float) -> None:
    """bench/results/scale.json from the points measured so far."""
    last = points[-1]
    # a year of ledger at the last point's size: every record of the current period, as
    # stored in etcd, once per monthly period (the policies' default period)
    ledger_year = last["allocation_bytes_stored"] * 12
    out = {
        "benchmark": "scale: one operator, kwok nodes with 30 pods each, a report per node "
                     "every 5 s",
        "cluster": "local control plane (kopeck.localcluster: etcd + kube-apiserver, no "
                   "controller-manager or scheduler) + kwok, same machine",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "wall_seconds": round(time.time() - started, 1),
        "points": points,
        "ledger_year_bytes": ledger_year,
        "ground_truth_matched": all(p["ground_truth_matched"] for p in points),
        "notes": NOTES,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {path}", flush=True)


NOTES = (
    "One probe token (TokenRequest of the operator's probe ServiceAccount) serves every "
    "simulated node: OperatorProcess runs with --probe-audience '' "
    "--no-require-node-binding, so per-node bound tokens are not exercised. "
    "etcd_bytes_per_day extrapolates the growth of etcd_mvcc_db_total_size_in_bytes over "
    "the window: it is dominated by MVCC history of Allocation status rewrites (every write "
    "stores the whole object again until the apiserver compacts, every 5 min), so it "
    "bounds the churn, not the ledger; allocation_bytes_stored is the ledger as etcd holds "
    "it (key + value under /registry/cost.kopeck.io/allocations/) and ledger_year_bytes is "
    "that x 12 monthly periods at the last point's size. lag is polled each second on one "
    "namespace (resolution 1 s). No pod churn or probe restarts yet."
)


if __name__ == "__main__":
    sys.exit(main())

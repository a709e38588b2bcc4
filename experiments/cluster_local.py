"""Rehearse the cluster path on one machine: cluster.yaml's node types, autoscaled as local processes.

Ray's fake multi-node provider (``provider: type: fake_multinode``, started by
``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``) launches worker nodes as local
raylets with the resources their node type declares, GPUs included, and the autoscaler adds and
removes them as it would cloud instances. This script derives that provider's config from
``cluster.yaml`` itself (node types, resources per node, min/max workers, upscaling speed; the
cloud ``node_config`` replaced by the fake provider's), starts the head, runs

    python -m raygan.tune --address auto --gpus-per-trial 0.25 --config experiments/cluster_local.yaml

and reports what happened: the GPU workers the autoscaler started from zero, the trials on each,
where the Parzen evaluator ran, the trials that finished, and the wall time. ``--kill-worker-after
S`` kills one GPU worker's processes (SIGKILL, as when a machine dies) S seconds after the first
trial result and reports the iterations its trials had to train again.

The fake GPUs are logical: torch cannot see them, so each trial trains on the CPU and says so
once (raygan.trainable.trial_device). The work stays small (experiments/cluster_local.yaml);
the nodes declare cluster.yaml's logical CPUs and GPUs.

It never touches a Ray it did not start: the cluster gets its own temp directory (where
``--address auto`` looks) and free ports, and RAY_ADDRESS points the driver at it. Every process
it starts runs in a new session; on success, failure and Ctrl-C, every process in those sessions
is stopped by its id (SIGTERM, then SIGKILL), and none is left behind.

    python experiments/cluster_local.py                 # the report as text
    python experiments/cluster_local.py --json          # one JSON object
    python experiments/cluster_local.py --json --kill-worker-after 20 --max-iterations 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
EXPERIMENT_YAML = Path(__file__).with_name("cluster_local.yaml")
NAME = "cluster_local"  # the experiment's name under the storage path
GPUS_PER_TRIAL = 0.25  # the fraction the README tells cluster users to pass
# The fake provider tags its head node with this type name (and has no setting for another).
FAKE_HEAD_TYPE = "ray.head.default"
FAKE_NODE_ID_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # each fake node's processes carry its id
# Each worker node is labelled with its node type: the GCS forgets a dead node's resources, not its labels.
NODE_TYPE_LABEL = "raygan/node-type"
OBJECT_STORE_BYTES = 256 * 1024**2  # per node: only the data set (~20 MB) travels through it
# A killed node is declared dead after 3 missed checks 1 s apart (Ray's default: 5 checks 3 s
# apart), so the rehearsal's lost trials restart within seconds; on the loaded 2-core machine a
# live node still gets 5 s to answer each check.
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 5000,
    "health_check_failure_threshold": 3,
}
AUTOSCALER_UPDATE_S = 5  # the autoscaler's loop period: Ray's default, as on the real cluster
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL for what is still alive after this long
POLL_S = 1.0


class RehearsalError(Exception):
    """The rehearsal could not run (a Ray at its address, a cluster that did not start)."""


# ------------------------------------------------------------------------------ the local config


def gpu_worker_types(cluster: dict) -> list[str]:
    """The worker node types of a cluster config that declare a GPU."""
    head = cluster["head_node_type"]
    types = cluster["available_node_types"]
    return [name for name, t in types.items() if name != head and t.get("resources", {}).get("GPU", 0) > 0]


def local_cluster_config(cluster: dict, gcs_address: str, max_gpu_workers: int | None = None) -> dict:
    """cluster.yaml's node types on Ray's fake multi-node provider.

    Kept from ``cluster``: every node type's resources and min/max workers, the cluster's
    max_workers, upscaling speed and idle timeout. Replaced: the provider (fake_multinode, node
    ids as addresses, no SSH updaters), each ``node_config`` (empty: nothing to launch), the head
    type's name (the fake provider's fixed one). Added: a small object store per node, and a
    label with the node type on each worker. Dropped: docker, auth, file mounts and setup
    commands, which the fake nodes (processes sharing this checkout) do not run.

    Args:
        cluster: the parsed cluster.yaml.
        gcs_address: ``host:port`` of the local head's GCS, which the fake workers join.
        max_gpu_workers: a lower cap on each GPU worker type's max_workers (None: cluster.yaml's).

    Returns:
        A config that Ray's autoscaler schema accepts.
    """
    types = {}
    for name, node_type in cluster["available_node_types"].items():
        head = name == cluster["head_node_type"]
        local = {
            "resources": {**node_type.get("resources", {}), "object_store_memory": OBJECT_STORE_BYTES},
            "node_config": {},
            "min_workers": 0 if head else node_type.get("min_workers", 0),
            "max_workers": 0 if head else node_type.get("max_workers", cluster["max_workers"]),
        }
        if not head:
            local["labels"] = {NODE_TYPE_LABEL: name}
        if not head and max_gpu_workers is not None and node_type.get("resources", {}).get("GPU", 0) > 0:
            local["max_workers"] = min(local["max_workers"], max_gpu_workers)
        types[FAKE_HEAD_TYPE if head else name] = local
    return {
        "cluster_name": f"{cluster['cluster_name']}-local",
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": cluster.get("idle_timeout_minutes", 5),
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "launch_multiple": True,  # n nodes when the autoscaler asks for n, as a cloud provider does
            "disable_node_updaters": True,  # no SSH: a node is up when its raylet is
            "disable_launch_config_check": True,
        },
        "auth": {},
        "docker": {},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# ------------------------------------------------------------------------------ reading the run


def read_results(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's results in order (Tune's result.json), keyed by trial id; a half-written last line is skipped."""
    trials: dict[str, list[dict]] = {}
    for path in sorted(experiment.glob("*/result.json")):
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({k: row.get(k) for k in ("trial_id", "training_iteration", "node_id", "algorithm/iteration")})
        if rows:
            trials[rows[0]["trial_id"]] = rows
    return trials


def iterations_redone(rows: Sequence[dict]) -> int:
    """Tune steps a trial reported and then trained again, after restarting from a checkpoint.

    A restart shows as a training_iteration that does not exceed the one before it: the trial
    had reported step L, resumed from its checkpoint at step R and reports R+1 next, so L - R
    steps were redone.
    """
    redone = 0
    for before, after in itertools.pairwise(rows):
        if after["training_iteration"] <= before["training_iteration"]:
            redone += before["training_iteration"] - (after["training_iteration"] - 1)
    return redone


def resume_step(rows: Sequence[dict], lost_node: str) -> int | None:
    """The checkpoint step a trial resumed from after leaving ``lost_node`` (None: it never left it)."""
    for before, after in itertools.pairwise(rows):
        if before["node_id"] == lost_node and after["node_id"] != lost_node:
            return after["training_iteration"] - 1
    return None


def trials_per_node(trials: dict[str, list[dict]]) -> dict[str, int]:
    """Distinct trials that reported from each node."""
    nodes: dict[str, set[str]] = {}
    for trial, rows in trials.items():
        for row in rows:
            nodes.setdefault(row["node_id"], set()).add(trial)
    return {node: len(ids) for node, ids in nodes.items()}


def busiest_node(trials: dict[str, list[dict]], max_iterations: int) -> tuple[str, list[str]] | None:
    """The node running the most unfinished trials now (by each trial's latest result), and those trials."""
    running: dict[str, list[str]] = {}
    for trial, rows in trials.items():
        if rows[-1]["training_iteration"] < max_iterations:
            running.setdefault(rows[-1]["node_id"], []).append(trial)
    if not running:
        return None
    node = max(running, key=lambda n: len(running[n]))
    return node, sorted(running[node])


def short(node_id: str | None) -> str:
    """A node id as the report shows it: the fake provider numbers its nodes in the last digits."""
    return "?" if node_id is None else node_id[-5:]


# ------------------------------------------------------------------------------ processes


@dataclass
class Sessions:
    """The sessions of the processes this script started: every process in them is ours."""

    ids: set[int]

    def pids(self) -> list[int]:
        """The live processes of the sessions (a zombie is dead: it only waits for its parent to read its status)."""
        return [pid for pid in _live_pids() if _sid(pid) in self.ids]

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM every process of the sessions, SIGKILL what is left after ``grace_s``; returns how many remain."""
        _signal_all(self.pids(), signal.SIGTERM)
        _wait_until(lambda: not self.pids(), grace_s)
        _signal_all(self.pids(), signal.SIGKILL)
        _wait_until(lambda: not self.pids(), grace_s)
        return len(self.pids())


def _live_pids() -> list[int]:
    """Every process on this machine but this one and zombies."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z":
            pids.append(int(entry.name))
    return pids


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _wait_until(done: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def node_pids(sessions: Sessions, node_id: str) -> list[int]:
    """Our processes that belong to one fake node: its raylet, agents and workers carry its id."""
    marker = f"{FAKE_NODE_ID_ENV}={node_id}".encode()
    found = []
    for pid in sessions.pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker in environ:
            found.append(pid)
    return found


def processes_mentioning(text: str) -> list[int]:
    """Any process on this machine whose command line contains ``text`` (our temp dir): what was left behind."""
    found = []
    for pid in _live_pids():
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _ray_cli() -> list[str]:
    ray = Path(sys.executable).with_name("ray")
    return [str(ray)] if ray.exists() else [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


# ------------------------------------------------------------------------------ the rehearsal


@dataclass(frozen=True)
class Options:
    """What to rehearse."""

    num_trials: int | None = None  # None: experiments/cluster_local.yaml's 8
    max_iterations: int | None = None  # Tune steps per trial; None: the YAML's
    max_gpu_workers: int | None = None  # cap on GPU workers (None: cluster.yaml's max_workers)
    kill_worker_after: float | None = None  # seconds after the first trial result; None: no node lost
    timeout_s: float = 600.0  # the tune run; past it the rehearsal stops everything and fails
    storage_path: str | None = None  # where Tune's results go (None: the rehearsal's temp dir, deleted)
    verbose: bool = False  # stream the tune driver's output instead of keeping it in a log


class Rehearsal:
    """One local cluster and one tune run on it; :meth:`run` returns the report, :meth:`stop` cleans up."""

    def __init__(self, options: Options, cluster: dict) -> None:
        self.options = options
        self.cluster = cluster
        self.temp = Path(tempfile.mkdtemp(prefix="rgc-"))  # short: Ray's socket paths must fit in 107 bytes
        self.sessions = Sessions(set())
        self.host = "127.0.0.1"
        self.port = free_port()
        self.address = f"{self.host}:{self.port}"
        storage = Path(options.storage_path).expanduser().resolve() if options.storage_path else self.temp / "results"
        self.storage = storage
        self.experiment = storage / NAME
        experiment = yaml.safe_load(EXPERIMENT_YAML.read_text())["tune"]
        self.max_iterations = options.max_iterations or experiment["max_iterations"]
        self.checkpoint_every = experiment["checkpoint_every"]
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        """Every process's environment: none of the caller's RAY_* settings, this cluster's own.

        Token authentication is on, as on cluster.yaml's nodes, with a token of this cluster's own
        in its temp dir: a token in ~/.ray/auth_token (which `ray start` would otherwise pick up
        and a driver would not) is never read or written.
        """
        token = self.temp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token),
            RAY_TMPDIR=str(self.temp),  # Ray's files, and where `--address auto` looks
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S=str(AUTOSCALER_UPDATE_S),
            RAY_USAGE_STATS_ENABLED="0",
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        return env

    # -- steps

    def start_cluster(self) -> None:
        """The head (cluster.yaml's head resources) with the autoscaler of the derived config."""
        if port_in_use(self.host, self.port):
            raise RehearsalError(f"something already listens on {self.address}; run again (a new port is chosen)")
        config = local_cluster_config(self.cluster, self.address, self.options.max_gpu_workers)
        config_path = self.temp / "cluster_local_autoscaler.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        head = self.cluster["available_node_types"][self.cluster["head_node_type"]]["resources"]
        command = [
            *_ray_cli(), "start", "--head", "--block",
            f"--port={self.port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--include-dashboard=false",
            f"--num-cpus={head.get('CPU', 1)}",
            f"--num-gpus={head.get('GPU', 0)}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--autoscaling-config={config_path}",
            f"--system-config={json.dumps(FAST_NODE_DEATH, separators=(',', ':'))}",
            "--disable-usage-stats",
        ]  # fmt: skip
        with open(self.temp / "head.log", "w") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.ids.add(process.pid)
        deadline = time.monotonic() + 120
        while not port_in_use(self.host, self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RehearsalError(f"the local head did not start; see {self.temp / 'head.log'}:\n{_tail(self.temp / 'head.log')}")
            time.sleep(POLL_S)

    def run_tune(self) -> tuple[int, float, dict | None]:
        """Run the population; kill a GPU worker on the way if asked. Returns exit code, seconds, the kill."""
        command = [
            sys.executable, "-m", "raygan.tune", "--address", "auto", "--gpus-per-trial", str(GPUS_PER_TRIAL),
            "--config", str(EXPERIMENT_YAML), "--storage-path", str(self.storage), "--name", NAME,
            "--max-iterations", str(self.max_iterations),
        ]  # fmt: skip
        if self.options.num_trials is not None:
            command += ["--num-trials", str(self.options.num_trials)]
        env = {**self.env, "RAY_ADDRESS": self.address}
        del env["RAY_FAKE_CLUSTER"]
        start = time.monotonic()
        with open(self.temp / "tune.log", "w") as log:
            out = None if self.options.verbose else log
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.ids.add(process.pid)
        first_result, kill = None, None
        while process.poll() is None:
            if time.monotonic() - start > self.options.timeout_s:
                raise RehearsalError(f"the tune run took longer than {self.options.timeout_s:g} s")
            time.sleep(POLL_S)
            if self.options.kill_worker_after is None or kill is not None:
                continue
            trials = read_results(self.experiment)
            if trials and first_result is None:
                first_result = time.monotonic()
            if first_result is not None and time.monotonic() - first_result >= self.options.kill_worker_after:
                kill = self.kill_busiest_node(trials, time.monotonic() - start)
        return process.returncode, time.monotonic() - start, kill

    def kill_busiest_node(self, trials: dict[str, list[dict]], at_s: float) -> dict:
        """SIGKILL every process of the GPU worker running the most unfinished trials."""
        target = busiest_node(trials, self.max_iterations)
        if target is None:
            return {"node": None, "trials": [], "at_s": at_s, "note": "every trial had finished"}
        node, on_node = target
        pids = node_pids(self.sessions, node)
        _signal_all(pids, signal.SIGKILL)
        reported = {t: trials[t][-1]["training_iteration"] for t in on_node}
        return {"node": node, "trials": on_node, "at_s": round(at_s, 1), "processes_killed": len(pids), "reported_before": reported}

    def cluster_facts(self) -> dict[str, Any]:
        """The nodes (live and dead) and where the evaluator ran, from the GCS (see :func:`cluster_facts`)."""
        from raygan.evaluator import evaluator_name

        command = [sys.executable, str(Path(__file__).resolve()), "--cluster-facts", self.address,
                   evaluator_name(NAME, str(self.storage))]  # the tune command's --name and --storage-path
        # In this script's own session: a Ctrl-C reaches it, and it starts no processes of its own.
        done = subprocess.run(command, check=False, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RehearsalError(f"could not read the cluster's nodes: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> int:
        """Stop every process this rehearsal started; returns how many Ray processes are left."""
        left = self.sessions.stop()
        return left + len(set(processes_mentioning(str(self.temp))) - set(self.sessions.pids()))

    def remove_files(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)

    # -- the whole

    def run(self) -> dict[str, Any]:
        self.start_cluster()
        code, tune_s, kill = self.run_tune()
        trials = read_results(self.experiment)
        facts = self.cluster_facts() if code == 0 or trials else None
        report = summarise(trials, facts, gpu_worker_types(self.cluster), self.max_iterations, self.checkpoint_every, kill)
        report.update(tune_exit_code=code, tune_wall_s=round(tune_s, 1))
        report["cpu_fallback_trials"] = count_device_notes(self.experiment)
        if code != 0:
            report["tune_log_tail"] = _tail(self.temp / "tune.log")
        return report


def cluster_facts(address: str, evaluator: str) -> dict[str, Any]:
    """Connected as a driver of its own: the cluster's nodes, live and dead, and the nodes of the
    evaluator's replicas (actors named ``<evaluator>-<i>``, :func:`raygan.evaluator.replica_names`).

    Runs in a process of its own (``--cluster-facts``), so that the caller never holds a Ray
    connection (a test runner may hold its own).
    """
    import ray
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    ray.init(address=address, log_to_driver=False, configure_logging=False, logging_level="ERROR")
    try:
        nodes = ray.nodes()
        actors = ray._private.state.actors().values()  # Ray's state API needs the dashboard, which is off
    finally:
        ray.shutdown()
    return {
        "head": FAKE_HEAD_NODE_ID,
        "nodes": {
            n["NodeID"]: {"alive": n["Alive"], "type": n.get("Labels", {}).get(NODE_TYPE_LABEL), "gpus": n["Resources"].get("GPU", 0)}
            for n in nodes
        },
        "evaluator_nodes": sorted({a["Address"]["NodeID"] for a in actors if (a.get("Name") or "").startswith(f"{evaluator}-")}),
    }


def gpu_nodes(facts: dict, gpu_types: Sequence[str]) -> list[str]:
    """The GPU workers among the nodes the cluster ever had, dead ones included (known by their type label)."""
    return sorted(n for n, info in facts["nodes"].items() if n != facts["head"] and (info["gpus"] > 0 or info["type"] in gpu_types))


def summarise(
    trials: dict[str, list[dict]],
    facts: dict | None,
    gpu_types: Sequence[str],
    max_iterations: int,
    checkpoint_every: int,
    kill: dict | None,
) -> dict[str, Any]:
    """The report: nodes started, trials per node, where the evaluator ran, finished trials, a lost node's cost."""
    per_node = trials_per_node(trials)
    gpus = gpu_nodes(facts, gpu_types) if facts else []
    report: dict[str, Any] = {
        "gpu_nodes_started": len(gpus),
        "trials": len(trials),
        "trials_finished": sum(rows[-1]["training_iteration"] >= max_iterations for rows in trials.values()),
        "trials_per_node": {short(n): per_node.get(n, 0) for n in gpus} if facts else {short(n): c for n, c in per_node.items()},
        "max_trials_per_gpu_node": max((per_node.get(n, 0) for n in gpus), default=0),
        "trials_on_head": per_node.get(facts["head"], 0) if facts else None,
        "evaluator_on_head": bool(facts) and facts["evaluator_nodes"] == [facts["head"]],
        "evaluator_nodes": [short(n) for n in facts["evaluator_nodes"]] if facts else [],
        "max_iterations": max_iterations,
        "checkpoint_every": checkpoint_every,
    }
    if kill is not None:
        affected = kill["trials"]
        lost = {t: iterations_redone(trials.get(t, [])) for t in affected}
        report["killed_node"] = short(kill["node"])
        report["killed_at_s"] = kill["at_s"]
        report["killed_trials"] = len(affected)
        report["killed_processes"] = kill.get("processes_killed", 0)
        report["iterations_lost"] = lost
        report["resumed_from_step"] = {t: resume_step(trials.get(t, []), kill["node"]) for t in affected}
        report["max_iterations_lost"] = max(lost.values(), default=0)
        report["lost_trials_resumed_on"] = sorted(
            {short(r["node_id"]) for t in affected for r in trials.get(t, []) if r["node_id"] != kill["node"]}
        )
        report["lost_trials_finished"] = sum(
            trials[t][-1]["training_iteration"] >= max_iterations for t in affected if t in trials
        )
    return report


def count_device_notes(experiment: Path) -> int:
    """Trials whose TensorBoard events hold the note that they train on the CPU despite a GPU."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    from raygan.monitor import NOTES_PREFIX

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # a restored trial's events make it warn
    count = 0
    for trial_dir in sorted(p for p in experiment.glob("*") if p.is_dir() and list(p.glob("events.out.tfevents.*"))):
        events = EventAccumulator(str(trial_dir), size_guidance={TENSORS: 0})
        events.Reload()
        count += any(tag.startswith(f"{NOTES_PREFIX}device") for tag in events.Tags().get("tensors", []))
    return count


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def rehearse(options: Options, cluster_yaml: Path = CLUSTER_YAML) -> dict[str, Any]:
    """Start the local cluster, run the population, stop everything; the report (see :func:`summarise`)."""
    start = time.monotonic()
    rehearsal = Rehearsal(options, yaml.safe_load(cluster_yaml.read_text()))
    report: dict[str, Any] = {}
    try:
        report = rehearsal.run()
    finally:
        report["ray_processes_left"] = rehearsal.stop()
        if options.storage_path is None:
            rehearsal.remove_files()
    report["wall_s"] = round(time.monotonic() - start, 1)  # cluster start to the last process stopped
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = [
        f"GPU worker nodes started by the autoscaler (from 0): {report['gpu_nodes_started']}",
        f"Trials per GPU node: {report['trials_per_node']} (most on one node: {report['max_trials_per_gpu_node']})",
        f"Parzen evaluator on the head: {report['evaluator_on_head']} (nodes {report['evaluator_nodes']})",
        (
            f"Trials finished: {report['trials_finished']} of {report['trials']} ({report['max_iterations']} steps each);"
            f" trained on the CPU with a note that their GPU is not visible: {report['cpu_fallback_trials']}"
        ),
    ]
    if "killed_node" in report:
        lines.append(
            f"Killed GPU node {report['killed_node']} {report['killed_at_s']} s into raygan.tune, with {report['killed_trials']} trials;"
            f" they resumed on {report['lost_trials_resumed_on']}, {report['lost_trials_finished']} finished;"
            f" steps trained again: {report['iterations_lost']} (checkpoint every {report['checkpoint_every']})"
        )
    lines.append(f"Wall time: {report['wall_s']} s ({report['tune_wall_s']} s in raygan.tune, exit code {report['tune_exit_code']});"
                 f" Ray processes left: {report['ray_processes_left']}")
    if report.get("tune_log_tail"):
        lines += ["", "raygan.tune's last lines:", report["tune_log_tail"]]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--num-trials", type=int, help="population size (default: experiments/cluster_local.yaml's 8)")
    p.add_argument("--max-iterations", type=int, help="Tune steps per trial (default: the YAML's)")
    p.add_argument("--max-gpu-workers", type=int, help="cap the GPU workers below cluster.yaml's max_workers")
    p.add_argument("--kill-worker-after", type=float, metavar="S", help="kill one GPU worker S seconds after the first trial result")
    p.add_argument("--timeout-s", type=float, default=600.0, help="give up (and clean up) when raygan.tune runs longer than this")
    p.add_argument("--storage-path", help="keep Tune's results here (default: a temp dir, deleted at the end)")
    p.add_argument("--verbose", action="store_true", help="show raygan.tune's output as it runs")
    p.add_argument("--cluster-facts", nargs=2, metavar=("ADDRESS", "EVALUATOR"), help=argparse.SUPPRESS)  # internal: see cluster_facts()
    return p


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = Options(
        num_trials=args.num_trials,
        max_iterations=args.max_iterations,
        max_gpu_workers=args.max_gpu_workers,
        kill_worker_after=args.kill_worker_after,
        timeout_s=args.timeout_s,
        storage_path=args.storage_path,
        verbose=args.verbose,
    )
    if args.cluster_facts:
        print(json.dumps(cluster_facts(*args.cluster_facts)))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # cleans up as Ctrl-C does
    try:
        report = rehearse(options)
    except RehearsalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every process this run started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["tune_exit_code"] == 0 and report["ray_processes_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

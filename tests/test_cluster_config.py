"""cluster.yaml: what `ray up` would accept, and the security and capacity properties we promise.

Nothing here reaches AWS: the few steps of `ray up` that call EC2 (listing instance types,
choosing key pair and subnets) are replaced by stubs, and any other AWS call fails the test.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
GPU_TYPE = "ray.worker.gpu"
TRIALS_PER_GPU = 4
GPU_PER_TRIAL = 1 / TRIALS_PER_GPU
CONTROL_PORTS = (6379, 8265, 10001)  # GCS, dashboard, Ray client

# What EC2's DescribeInstanceTypes reports for the types cluster.yaml uses (the fields Ray reads).
EC2_INSTANCE_TYPES = [
    {"InstanceType": "m7i.xlarge", "VCpuInfo": {"DefaultVCpus": 4}, "MemoryInfo": {"SizeInMiB": 16384}},
    {
        "InstanceType": "g6.2xlarge",
        "VCpuInfo": {"DefaultVCpus": 8},
        "MemoryInfo": {"SizeInMiB": 32768},
        "GpuInfo": {"Gpus": [{"Name": "L4", "Manufacturer": "NVIDIA", "Count": 1}]},
    },
]


def _raw_text() -> str:
    return CLUSTER_YAML.read_text()


def _load() -> dict:
    return yaml.safe_load(_raw_text())


def _comment_lines() -> list[str]:
    lines = (line.strip() for line in _raw_text().splitlines())
    return [line.lstrip("#").strip() for line in lines if line.startswith("#")]


def _uncommented_text() -> str:
    lines = _raw_text().splitlines()
    return "\n".join(line.split(" #", 1)[0] for line in lines if not line.strip().startswith("#"))


def _node_types(config: dict) -> dict:
    return config["available_node_types"]


def _gpu_trial(cpus: float = 1.0) -> dict:
    return {"CPU": cpus, "GPU": GPU_PER_TRIAL}


@pytest.fixture
def ray_up_bootstrap(monkeypatch):
    """Run `ray up`'s own config preparation (``_bootstrap_config``) with EC2 stubbed out.

    This is the path ``ray up`` takes before it launches anything: defaults are merged, node
    resources are auto-filled from the instance types, the schema is validated, and the AWS
    provider's bootstrap fills in IAM, key pair, subnets, security groups and the AMI.
    """
    from ray.autoscaler._private import commands
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws import node_provider

    def stub_instance_types(region, aws_credentials=None):
        return copy.deepcopy(EC2_INSTANCE_TYPES)

    monkeypatch.setattr(node_provider, "list_ec2_instances", stub_instance_types)

    def no_aws(*args, **kwargs):
        raise AssertionError(f"cluster.yaml made `ray up` call AWS here: {args!r}")

    monkeypatch.setattr(aws_config, "_resource", no_aws)
    monkeypatch.setattr(aws_config, "_client", no_aws)
    monkeypatch.setattr(aws_config, "_upsert_security_groups", no_aws)

    def stub_key_pair(config):
        config["auth"]["ssh_private_key"] = "~/.ssh/ray-autoscaler_stub.pem"
        for node_type in _node_types(config).values():
            node_type["node_config"]["KeyName"] = "ray-autoscaler_stub"
        return config

    def stub_subnets(config):
        for node_type in _node_types(config).values():
            node_type["node_config"].setdefault("SubnetIds", ["subnet-stub"])
        return config

    monkeypatch.setattr(aws_config, "_configure_key_pair", stub_key_pair)
    monkeypatch.setattr(aws_config, "_configure_subnet", stub_subnets)

    def run(config: dict) -> dict:
        return commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)

    return run


# ------------------------------------------------------------------------------ Ray's validation


def test_passes_ray_schema_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load()))


def test_schema_validation_is_not_vacuous():
    """The same validator rejects a fractional GPU resource and an unknown top-level key."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    fractional = _load()
    _node_types(fractional)[GPU_TYPE]["resources"]["GPU"] = GPU_PER_TRIAL
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(fractional))

    unknown = _load()
    unknown["dashboard_port"] = 8265
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(unknown))


def test_ray_up_bootstrap_accepts_config_without_touching_network(ray_up_bootstrap):
    raw = _load()
    booted = ray_up_bootstrap(raw)

    for name, node_type in _node_types(raw).items():
        before, after = node_type["node_config"], _node_types(booted)[name]["node_config"]
        # Ray keeps the security group, instance profile and AMI we chose, creating none.
        assert after["SecurityGroupIds"] == before["SecurityGroupIds"]
        assert after["IamInstanceProfile"] == before["IamInstanceProfile"]
        assert after["ImageId"] == before["ImageId"]
        # Our explicit resources win over what Ray detects from the instance type.
        for resource, amount in node_type["resources"].items():
            assert _node_types(booted)[name]["resources"][resource] == amount

    # Ray did detect the instance types (it only warns when it cannot), and agrees with us.
    gpu_resources = _node_types(booted)[GPU_TYPE]["resources"]
    assert "accelerator_type:L4" in gpu_resources and "memory" in gpu_resources, gpu_resources
    assert gpu_resources["GPU"] == 1


# ----------------------------------------------------------------------------------- security


def test_ray_would_open_ssh_to_the_world_in_a_group_it_creates():
    """Why cluster.yaml names its own security group: in a group Ray creates, Ray adds SSH from
    0.0.0.0/0 next to any provider.security_group rules, which cannot remove it."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    ours = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}
    rules = _create_default_inbound_rules({"sg-stub"}, [ours])
    world = [r for r in rules if {"CidrIp": "0.0.0.0/0"} in r.get("IpRanges", [])]
    assert world and world[0]["FromPort"] == 22, rules


def test_every_node_uses_one_user_managed_security_group():
    config = _load()
    assert "security_group" not in config["provider"], (
        "provider.security_group makes Ray create a group with SSH open to 0.0.0.0/0"
    )
    groups = {tuple(nt["node_config"].get("SecurityGroupIds", ())) for nt in _node_types(config).values()}
    assert len(groups) == 1 and all(groups), f"every node type must name the same SecurityGroupIds: {groups}"


def _setup_assignments() -> dict[str, str]:
    values = {}
    for line in _comment_lines():
        match = re.match(r"^([A-Z_]+)=(\S+)", line)
        if match:
            values[match.group(1)] = match.group(2).strip("'\"")
    return values


def _ingress_commands() -> list[list[str]]:
    return [shlex.split(line) for line in _comment_lines() if "authorize-security-group-ingress" in line]


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_the_only_ingress_from_outside_is_ssh_from_the_users_cidr():
    commands = _ingress_commands()
    assert len(commands) == 2, commands
    group = _flag(commands[0], "--group-id")

    internal = [c for c in commands if _flag(c, "--source-group") is not None]
    external = [c for c in commands if _flag(c, "--source-group") is None]
    # 1. Members of the group talk to each other on every port (GCS, raylets, object transfer).
    assert len(internal) == 1
    assert _flag(internal[0], "--source-group") == group == _flag(internal[0], "--group-id")
    assert _flag(internal[0], "--cidr") is None
    # 2. The outside world reaches SSH only, from one range the user sets.
    assert len(external) == 1
    ssh = external[0]
    assert _flag(ssh, "--protocol") == "tcp" and _flag(ssh, "--port") == "22", ssh
    cidr_ref = _flag(ssh, "--cidr")
    assert cidr_ref == "$MY_CIDR", ssh
    cidr = ipaddress.ip_network(_setup_assignments()["MY_CIDR"])
    assert cidr.prefixlen > 0, f"SSH must not be open to the whole internet ({cidr})"
    assert "ip-permissions" not in " ".join(ssh)


def test_no_control_port_is_opened_and_nothing_binds_publicly():
    for argv in _ingress_commands():
        port = _flag(argv, "--port")
        assert port is None or int(port.split("-")[0]) not in CONTROL_PORTS, argv
    body = _uncommented_text()
    assert "0.0.0.0" not in body and "::/0" not in body
    for port in CONTROL_PORTS:
        assert f"-p {port}" not in body and "--publish" not in body  # no docker port publishing

    head = " ".join(_load()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head


def _ray_start_commands(config: dict, key: str) -> list[str]:
    starts = [c for c in config[key] if "ray start" in c]
    assert starts, f"{key} starts no Ray"
    return starts


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_token_authentication_is_on_in_start_commands(key):
    for command in _ray_start_commands(_load(), key):
        before_start = command.split("ray start", 1)[0]
        assert re.search(r"(^|[;\s])export RAY_AUTH_MODE=token;", before_start), command


def test_token_authentication_is_on_for_every_process_in_the_container():
    config = _load()
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # The token travels as a file to Ray's default token path, never in the config itself.
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in _uncommented_text()


def test_installed_ray_supports_token_authentication():
    """Ray 2.52 introduced RAY_AUTH_MODE=token and `ray get-auth-token`; the pinned Ray has both."""
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR
    from ray._raylet import AuthenticationMode
    from ray.scripts.scripts import cli

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert hasattr(AuthenticationMode, "TOKEN")
    assert "get-auth-token" in cli.commands


# ---------------------------------------------------------------------------- capacity and cost


def test_gpu_workers_scale_from_zero_and_pack_four_trials_per_gpu():
    from raygan.config import TuneConfig

    config = _load()
    gpu = _node_types(config)[GPU_TYPE]
    assert gpu["min_workers"] == 0
    assert gpu["max_workers"] >= 1
    resources = gpu["resources"]
    assert resources["GPU"] >= 1
    cpus_per_trial = max(1.0, TuneConfig().cpus_per_trial)
    assert int(resources["GPU"] / GPU_PER_TRIAL) >= TRIALS_PER_GPU
    assert resources["CPU"] >= TRIALS_PER_GPU * cpus_per_trial
    head = _node_types(config)[config["head_node_type"]]
    assert not head["resources"].get("GPU"), "GPU trials belong on the GPU workers"


def test_autoscaler_starts_one_gpu_node_per_four_fractional_trials():
    """Ray's own bin packing: 4 trials of 0.25 GPU need one GPU worker, 16 need four.

    Mocked on purpose: tests/test_cluster_local.py starts the real autoscaler on a local cluster
    and checks the 4-trials case (slow, ~80 s); 16 trials on four fake GPU nodes would take many
    minutes and gigabytes on a 2-core machine, so the 16-trial case and the fast suite keep this
    call into the autoscaler's own scheduler."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(_load())

    def scorer(node_resources, resources, node_type):
        return _default_utilization_scorer(
            node_resources, resources, node_type, node_availability_summary=NodeAvailabilitySummary({})
        )

    for trials, nodes in ((TRIALS_PER_GPU, 1), (4 * TRIALS_PER_GPU, 4)):
        to_add, unmet = get_nodes_for(
            config["available_node_types"],
            {config["head_node_type"]: 1},
            config["head_node_type"],
            config["max_workers"],
            [_gpu_trial() for _ in range(trials)],
            scorer,
        )
        assert unmet == [] and dict(to_add) == {GPU_TYPE: nodes}, (trials, dict(to_add), unmet)


def test_idle_nodes_are_terminated():
    config = _load()
    assert 0 < config["idle_timeout_minutes"] <= 60
    assert config["provider"]["cache_stopped_nodes"] is False


# ------------------------------------------------------------------------------------ versions


def _pinned_ray_versions(text: str) -> set[str]:
    return set(re.findall(r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)", text))


def test_ray_version_is_pinned_consistently_and_matches_the_project():
    import ray
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    config = _load()
    image = config["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
    assert match, f"pin an exact Ray release and Python in the image tag, not {image!r}"
    image_ray, python = match.group(1), f"{match.group(2)}.{match.group(3)}"

    # setup_commands hold pip to the image's Ray; the comments tell users the same.
    assert _pinned_ray_versions(" ".join(config["setup_commands"])) == {image_ray}
    assert _pinned_ray_versions(_raw_text()) == {image_ray}

    assert Version(image_ray).release[:2] == Version(ray.__version__).release[:2], ray.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_req = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray")
    assert Version(image_ray) in ray_req.specifier, (image_ray, str(ray_req))
    assert Version(python) in SpecifierSet(project["requires-python"]), python


def test_project_is_mounted_and_installed_on_every_node():
    config = _load()
    assert config["file_mounts"].get("~/raygan") == "."
    assert any(re.search(r"pip install .*-e ~/raygan", c) for c in config["setup_commands"])

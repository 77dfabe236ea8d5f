"""configs/cluster/: the `ray up` launcher file and the KubeRay RayJob are valid and run the MNIST sweep on GPUs.

Offline and fast: the launcher file is checked against the schema shipped inside the installed Ray (and Ray's
own config checks), the RayJob against the fields KubeRay's ray.io/v1 CRD requires, and the sweep command in
each against this project's own CLI parser and sweep-file loader.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs" / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
SWEEP = "sweep run configs/mnist.yaml"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GPU_INSTANCE = re.compile(r"^(g\d|p\d)")  # AWS NVIDIA GPU families: g4dn, g5, g6, p4d, p5, ...


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def sweep_argv(command: str) -> list[str]:
    """The `sweep ...` part of a shell line such as `cd ~/aesweep && sweep run ...`."""
    for part in command.split("&&"):
        argv = shlex.split(part)
        if argv and argv[0] == "sweep":
            return argv
    raise AssertionError(f"no `sweep` command in {command!r}")


def check_sweep_command(command: str) -> None:
    """The command runs the MNIST sweep, is accepted by this project's CLI, and writes to shared (s3) storage."""
    from sweep import cli, spec

    assert SWEEP in " ".join(sweep_argv(command))
    args = cli._parser().parse_args(sweep_argv(command)[1:])
    assert args.command == "run" and args.config == "configs/mnist.yaml"
    loaded = spec.load(REPO / args.config, tuple(args.overrides))
    assert loaded.name == "mnist"
    assert loaded.storage_path.startswith("s3://"), "a multi-node sweep needs shared storage_path"


# ---- (c) both files are YAML ------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_files_are_yaml_mappings(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_both_files_exist():
    assert LAUNCHER.is_file() and RAYJOB.is_file() and (CLUSTER / "README.md").is_file()


# ---- (a) the Ray cluster launcher file ----------------------------------------------------------

def test_launcher_matches_rays_schema(launcher):
    schema = json.loads(files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)


def test_launcher_passes_rays_own_checks(launcher):
    """What `ray up` runs before touching the cloud: defaults merged in, schema, node types, min vs max workers."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(launcher))
    util.validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_launcher_head_takes_no_trials(launcher):
    head = launcher["available_node_types"][launcher["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials need a CPU each; CPU 0 keeps them off the head"
    assert head["resources"].get("GPU", 0) == 0
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"])
    for command in launcher.get("head_start_ray_commands", []):
        assert "--num-cpus" not in command or "--num-cpus=0" in command


def test_launcher_has_gpu_workers(launcher):
    workers = {name: t for name, t in launcher["available_node_types"].items() if name != launcher["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no worker type asks for GPUs"
    for name, t in gpu.items():
        assert GPU_INSTANCE.match(t["node_config"]["InstanceType"]), f"{name} is not a GPU instance type"
        # `sweep run` sizes trials from the resources present at start, so the GPU workers start with the head.
        assert 1 <= t["min_workers"] <= t["max_workers"] <= launcher["max_workers"]
    assert launcher["docker"]["image"].startswith("rayproject/ray:") and launcher["docker"]["image"].endswith("-gpu")


def test_launcher_installs_the_synced_project(launcher):
    remote = next(r for r, local in launcher["file_mounts"].items() if local in (".", "./"))
    assert any("pip install" in c and remote in c for c in launcher["setup_commands"])


def test_launcher_workers_preload_the_trial_code_but_not_torch(launcher):
    from sweep.runner import TRIAL_CODE

    start = next(c for c in launcher["worker_start_ray_commands"] if "ray start" in c)
    assert f"RAY_preload_python_modules={','.join(TRIAL_CODE)} ray start" in start


def test_launcher_sweep_command(launcher):
    command = launcher["metadata"]["sweep_command"]
    check_sweep_command(command)
    assert "--address auto" in command, "without an address `sweep` starts its own single-node Ray"


# ---- (b) the KubeRay RayJob ---------------------------------------------------------------------

def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def all_containers(rayjob: dict) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [c for pod in pods for c in containers(pod)]


def test_rayjob_header(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert DNS1123_LABEL.match(rayjob["metadata"]["name"])


def test_rayjob_entrypoint(rayjob):
    check_sweep_command(rayjob["spec"]["entrypoint"])


def test_rayjob_runtime_env_is_valid_for_ray(rayjob):
    """runtimeEnvYAML is a YAML string Ray accepts; its working_dir holds configs/mnist.yaml, its pip gives `sweep`."""
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert env["working_dir"].endswith(".zip")
    assert any("aesweep" in p for p in env["pip"])


def test_rayjob_lifecycle_fields(rayjob):
    spec = rayjob["spec"]
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
    assert isinstance(spec["shutdownAfterJobFinishes"], bool)
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0


def test_rayjob_head_takes_no_trials(rayjob):
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for c in containers(head["template"]):
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get(section, {})


def test_rayjob_gpu_workers(rayjob):
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert DNS1123_LABEL.match(g["groupName"])
        assert isinstance(g["rayStartParams"], dict)  # required by KubeRay <= 1.1
        assert 1 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpus = [int(c["resources"]["limits"]["nvidia.com/gpu"]) for g in groups for c in containers(g["template"])
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
    assert gpus and min(gpus) >= 1, "no worker container asks for nvidia.com/gpu in its limits"


def test_rayjob_containers(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert "rayStartParams" in cluster["headGroupSpec"] and containers(cluster["headGroupSpec"]["template"])[0]["image"]
    for c in all_containers(rayjob):
        assert DNS1123_LABEL.match(c["name"]), c
        assert c["image"], c
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams is a map of strings"


def test_same_ray_everywhere(launcher, rayjob):
    """One Ray version and Python on every node of both clusters: the RayJob's rayVersion, its images, ray up's image."""
    images = {c["image"] for c in all_containers(rayjob)} | {launcher["docker"]["image"]}
    assert len(images) == 1, images
    tag = images.pop().split(":", 1)[1]
    assert tag.startswith(f"{rayjob['spec']['rayClusterSpec']['rayVersion']}-py")

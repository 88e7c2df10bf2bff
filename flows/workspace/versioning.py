"""DVC bookkeeping: the one source of truth for "is this stage up to date", and the record of runs.

The flow runs each stage in-process and records it with `dvc commit`, exactly as `dvc repro` would
(same dvc.yaml, same hashes), so either entry point leaves the other nothing to do. Every run is
then saved as a DVC experiment named after the run, and pushed when a remote is configured.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dvc.repo import Repo
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from flows.workspace.connections import check_s3
from flows.workspace.params import INPUTS, flatten
from tasks.artifacts import atomic_path
from tasks.config import Params
from tasks.errors import InputError
from tasks.inputs import stage_inputs

LOCK_FILE = Path(".shrinkflow") / "run.lock"
PARAMS_FILE = "params.yaml"
DVC_LOCK = "dvc.lock"
INPUTS_COMMENT = """\
Written by shrinkflow from the keys above; do not edit. dvc.yaml lists these paths as deps,
so DVC tracks the files (and folders) by content. A built-in source names its stage's code."""
# Written by DVC or by a run, and part of what an experiment records.
EXPERIMENT_FILES = [
    DVC_LOCK, PARAMS_FILE, "metrics/metrics.json", "metrics/sparsity.json",
    "metrics/quant_sensitivity.json", "artifacts/.gitignore", "plots/.gitignore",
]  # named one by one: `shrinkflow bench` also writes under metrics/, and that is no run's record
# Set by `shrinkflow init` where git has no identity at all (CI machines, containers).
LOCAL_IDENTITY = {"user.name": "shrinkflow", "user.email": "shrinkflow@localhost"}


def init_workspace(root: Path, params: Params) -> list[str]:
    """Make `root` a git repository with an identity, a commit, an initialised DVC project and a
    params.yaml that holds `params` (with its `inputs:`), doing only what is missing; report the
    steps."""
    done = []
    if not (root / ".git").exists():
        _git(root, "init", "-q")
        done.append("git init")
    if not _has_identity(root):  # DVC commits every run as an experiment: git must know who
        for key, value in LOCAL_IDENTITY.items():
            _git(root, "config", key, value)
        done.append("a repository-local git identity (shrinkflow)")
    if not (root / ".dvc").exists():
        with Repo.init(str(root)) as repo, repo.config.edit() as config:
            config["core"]["analytics"] = False  # no network here
        done.append("dvc init")
    if write_params_file(root, params):
        done.append(f"{PARAMS_FILE} completed")
    if subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=root,
                      capture_output=True).returncode != 0:
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "shrinkflow: initial commit")
        done.append("first commit")
    return done


def open_repo(root: Path) -> Repo:
    """The DVC project at `root`, or a clear error saying how to make one."""
    fix = f"run `shrinkflow init` in {root.resolve()} (sets up git, DVC and a first commit)"
    if not (root / "dvc.yaml").exists():
        raise InputError(f"no dvc.yaml in {root.resolve()}; run shrinkflow from the project directory")
    try:
        repo = Repo(str(root))
    except Exception as exc:  # NotDvcRepoError, SCMError: both mean "not set up"
        raise InputError(f"{root.resolve()} is not a DVC project in a git repository; {fix}") from exc
    if repo.scm.no_commits:
        problem = "has no commit yet"
    elif not _has_identity(root):
        problem = "has no git user.name/user.email, which DVC needs to save runs as experiments"
    else:
        try:
            check_remote(repo)
        except InputError:
            repo.close()
            raise
        return repo
    repo.close()
    raise InputError(f"the git repository at {root.resolve()} {problem}; {fix}")


def check_remote(repo: Repo) -> None:
    """The default DVC remote, when it is on S3, is reachable with the environment's keys: a run
    pushes to it at its end, and finding out then would waste the training."""
    name = repo.config["core"].get("remote")
    remote = repo.config["remote"].get(name, {}) if name else {}
    if remote.get("url", "").startswith("s3://"):
        check_s3(f"DVC remote {name!r} (.dvc/config)", remote["url"], remote.get("endpointurl"))


def is_up_to_date(root: Path, stage: str) -> bool:
    """DVC's verdict: deps, params and outs all match what dvc.lock recorded for `stage`."""
    with _repo(root) as repo:
        return not repo.status(targets=[stage])


def record_stage(root: Path, stage: str) -> None:
    """`dvc commit` the stage: hash its deps, params and outs into dvc.lock and cache the outs."""
    with _repo(root) as repo:
        repo.commit(stage, force=True)


def record_experiment(root: Path, name: str) -> str | None:
    """`dvc exp save` the workspace (params, dvc.lock, metrics) as an experiment named `name`,
    then `dvc push` the run's outputs to the default remote, if there is one; return its name."""
    with _repo(root) as repo:
        present = [path for path in EXPERIMENT_FILES if Path(path).exists()]
        repo.experiments.save(name=name, force=True, include_untracked=present)
        remote = repo.config["core"].get("remote")
        if remote:
            repo.push()
        return remote


def output_md5s(root: Path) -> dict[str, str]:
    """The md5 DVC recorded for every stage output, by path."""
    lock = _lock(root)
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if "md5" in out
    }


@dataclass(frozen=True)
class Fingerprint:
    """What DVC recorded for one input: its path and content hash (md5, `.dir` for folders)."""

    path: str
    md5: str


def inputs_section(params: Params) -> dict[str, dict[str, str]]:
    """params.yaml's `inputs:`: every input key's file, for dvc.yaml's templated deps.

    DVC cannot template a part of a string (`npz:PATH`) nor skip a dep, so each key gets a
    path of its own; a built-in source (digits, train, no weights or student file) names its
    stage's module, already a dep of that stage, which keeps the dep valid and changes nothing.
    """
    section: dict[str, dict[str, str]] = {}
    for stage, files in stage_inputs(params).items():
        for key, path in files.items():
            group, name = key.split(".")
            section.setdefault(group, {})[name] = str(path or Path("tasks") / f"{stage}.py")
    return section


def check_inputs_section(root: Path, params: Params) -> None:
    """Refuse to run a stage (`dvc repro`) when params.yaml's `inputs:` no longer matches the keys
    it is derived from: DVC would track the wrong files."""
    path = root / PARAMS_FILE
    written = (yaml.safe_load(path.read_text()) or {}).get(INPUTS) if path.exists() else None
    recorded = flatten(written or {})
    stale = [key for key, file in flatten(inputs_section(params)).items() if recorded.get(key) != file]
    if stale:
        raise InputError(
            f"{PARAMS_FILE}: inputs.{', inputs.'.join(stale)} out of step with "
            f"{', '.join(stale)} (edited by hand or by `dvc exp run -S`?); run `shrinkflow init` "
            "to bring the inputs section in step, then repeat the command"
        )


def recorded_inputs(root: Path, params: Params) -> dict[str, Fingerprint]:
    """The fingerprint dvc.lock holds for each user input file, by config key (built-ins left out).

    Read from DVC's own record, so a large input is hashed once per run, by DVC.
    """
    lock = _lock(root).get("stages", {})
    found = {}
    for stage, files in stage_inputs(params).items():
        # DVC writes a dep inside the project relative to it, whatever the path given
        deps = {(root / dep["path"]).resolve(): dep for dep in lock.get(stage, {}).get("deps", [])}
        for key, path in files.items():
            dep = deps.get((root / path).resolve()) if path else None
            if dep and "md5" in dep:
                found[key] = Fingerprint(str(path), dep["md5"])
    return found


def forget_stage(root: Path, stage: str) -> None:
    """Drop `stage` from dvc.lock, so DVC runs it again: what it recorded cannot be trusted."""
    lock = _lock(root)
    if stage not in lock.get("stages", {}):
        return
    del lock["stages"][stage]
    with atomic_path(root / DVC_LOCK) as tmp:
        tmp.write_text(yaml.safe_dump(lock, sort_keys=False))


def git_commit(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()


def write_params_file(root: Path, params: Params) -> bool:
    """Make params.yaml hold exactly `params`: DVC reads the params a stage ran with from there.

    As with `dvc exp run --set-param`, overrides are written into the file (comments kept, keys
    missing from the file added), so dvc.lock and the experiment record what really ran.
    """
    document, changed = _params_document(root, params)
    if changed:
        with atomic_path(root / PARAMS_FILE) as tmp, open(tmp, "w") as f:
            YAML().dump(document, f)
    return changed


class StageStatus:
    """DVC's verdict on every stage (inputs by content, code, params and outputs as recorded),
    asked of `dvc status` in a child process as soon as this is made: a run that finds nothing
    changed imports MLflow meanwhile (2.4 s of one core)."""

    def __init__(self, root: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "dvc", "status", "--json"],
                                        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)

    def up_to_date(self) -> bool:
        out, err = self.process.communicate()
        if self.process.returncode:
            raise RuntimeError(f"dvc status failed: {err.strip()}")
        return not json.loads(out)

    def cancel(self) -> None:
        self.process.kill()
        self.process.wait()


def nothing_changed(root: Path, params: Params, status: StageStatus | None = None) -> bool:
    """Whether a run with `params` would skip every stage: params.yaml already holds them (else
    DVC is not asked: it cannot read a dvc.yaml whose `inputs:` params.yaml does not hold yet)
    and DVC's `status` (asked now if not given) says every stage is up to date."""
    if _params_document(root, params)[1]:
        if status:
            status.cancel()
        return False
    return (status or StageStatus(root)).up_to_date()


def _params_document(root: Path, params: Params) -> tuple[CommentedMap, bool]:
    """params.yaml (comments kept) updated to hold `params` and their `inputs:`; whether it changed."""
    path = root / PARAMS_FILE
    round_trip = YAML()
    round_trip.preserve_quotes = True
    document = round_trip.load(path) if path.exists() else None
    document = document if isinstance(document, dict) else CommentedMap()
    new_section = INPUTS not in document
    changed = False
    wanted = flatten(params.model_dump(mode="json") | {INPUTS: inputs_section(params)})
    for key, value in wanted.items():
        *sections, leaf = key.split(".")
        node = document
        for section in sections:
            if not isinstance(node.get(section), dict):
                node[section] = CommentedMap()
            node = node[section]
        if leaf not in node or _plain(node[leaf]) != value:
            node[leaf] = value
            changed = True
    if new_section:
        document.yaml_set_comment_before_after_key(INPUTS, before=INPUTS_COMMENT)
    return document, changed


@contextmanager
def workspace_lock(root: Path, on_wait: Callable[[str], Any] = print) -> Iterator[None]:
    """One run per workspace: a second run waits for the first (and says so) instead of racing it."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            on_wait(f"another shrinkflow run ({handle.read().strip() or 'unknown'}) is using "
                    f"{root.resolve()}; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _repo(root: Path) -> Iterator[Repo]:
    """The DVC project at `root`, worked on from there: DVC resolves stage names and paths
    against the process's working directory, whatever root the Repo was opened with."""
    previous = Path.cwd()
    os.chdir(root)
    try:
        with Repo(".") as repo:
            yield repo
    finally:
        os.chdir(previous)


def _lock(root: Path) -> dict[str, Any]:
    path = root / DVC_LOCK
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _plain(value: Any) -> Any:
    """ruamel's round-trip types, as plain JSON-like values for comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _has_identity(root: Path) -> bool:
    return all(
        subprocess.run(["git", "config", key], cwd=root, capture_output=True).returncode == 0
        for key in LOCAL_IDENTITY
    )


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True)

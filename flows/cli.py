"""`shrinkflow` command line: `run` the whole flow, or one `stage` (what dvc.yaml calls).

Every command but `down` reads all of params.yaml at the door, in `main` (flows/stack/config.py
`load_config`): a bad value in any section is refused before any command starts work.

Exit codes: 0 ok, 2 bad input (a message, no traceback), 1 failure.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from threading import Thread
from typing import TYPE_CHECKING
from unittest import mock

from flows.signals import guard_run, starting_process

if TYPE_CHECKING:
    from flows.stack.config import Config

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def entry() -> None:
    """The `shrinkflow` command: `main`, and an exit without the interpreter's teardown.

    Tearing down the ~2,000 modules a run imports took 0.7 s for MLflow's alone, a sixth of a
    no-op run. Every atexit handler still runs (the temporary Prefect server's stop, MLflow's,
    logging's flush): this one, registered first, runs last."""
    code = EXIT_FAILURE  # an uncaught exception's
    # `run` stops at any SIGTERM or Ctrl-C with every process it started (flows/signals.py)
    guard = guard_run() if sys.argv[1:2] == ["run"] else None

    def exit_now() -> None:
        if guard:  # after Prefect's atexit stop of its temporary server: anything still left
            guard.end_started()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(exit_now)
    try:
        code = main()
    except SystemExit as exc:  # SIGTERM's (flows/signals.py) or argparse's
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE if exc.code else 0
        raise
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
        raise SystemExit(code) from None
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # heavy imports after parsing: --help stays instant
    from flows.stack.config import load_config
    from tasks.errors import InputError

    try:
        # `down` reads no config: a broken params.yaml never keeps a stack from stopping
        config = load_config(args.params, args.set) if "params" in args else None
        return args.command(args, config)
    except InputError as exc:
        print(f"shrinkflow: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run(args: argparse.Namespace, config: Config) -> int:
    from flows.workspace.versioning import StageStatus, open_repo, workspace_lock

    params = config.params
    open_repo(Path(".")).close()
    with workspace_lock(Path("."), on_wait=lambda message: print(message, file=sys.stderr)):
        status = StageStatus(Path("."))  # DVC's verdict, in a child process while MLflow imports
        from flows.record.report import run_summary
        from flows.record.unchanged import last_run_if_unchanged, record_unchanged
        from flows.stack.servers import use_running_stack

        # In-process, so the run keeps this terminal, its overrides and its exit code; with the
        # stack up it is still a flow run of the stack's Prefect server, in its UI.
        stack = use_running_stack(Path("."), params.tracking.uri)
        last = last_run_if_unchanged(params, Path("."), status)
        if last:  # recorded in seconds: no Prefect flow to run, nothing to measure again
            print(run_summary(record_unchanged(params, Path("."), last)))
            return 0
    from flows.stages import check_changed_inputs

    # Fail fast, before Prefect starts; the flow checks again for runs from the UI or a schedule.
    check_changed_inputs(params, Path("."))
    prefect_ready = None if stack else _start_temporary_prefect()

    from flows.compress import compress
    from tasks.errors import InputError

    if prefect_ready:
        prefect_ready.join()
    try:
        report = compress(params)
    except InputError:
        raise
    except Exception as exc:  # Prefect has already logged the traceback
        print(f"shrinkflow: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(run_summary(report))
    return 0


def _start_temporary_prefect() -> Thread | None:
    """Start Prefect's temporary server, unless an API URL is configured, in the background while
    the flow's modules load: it takes seconds, most of them in its own process. Prefect's client
    then finds it running (one per process, stopped at exit)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    class OwnSessionServer(SubprocessASGIServer):
        """The temporary server in a session of its own: a signal to the run's process group
        (systemd's stop, a terminal's Ctrl-C) stopped it first, and the run then retried its
        events for minutes. The run stops it at exit. Prefect's client finds this instance:
        the class keeps one per port in a dict the subclass shares."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Popen patched for the one call: another thread's child started meanwhile merely
            # gets a session of its own too.
            with starting_process(), mock.patch.object(
                    subprocess, "Popen", partial(subprocess.Popen, start_new_session=True)):
                return super()._run_uvicorn_command()

    thread = Thread(target=OwnSessionServer().start, name="prefect-server", daemon=True)
    thread.start()
    return thread


def init(args: argparse.Namespace, config: Config) -> int:
    from flows.workspace.versioning import init_workspace

    done = init_workspace(Path("."), config.params)
    print(f"initialised: {', '.join(done)}" if done else "already initialised: git, DVC, a commit")
    return 0


def stage(args: argparse.Namespace, config: Config) -> int:
    from flows.stages import run_stage
    from flows.workspace.versioning import check_inputs_section, workspace_lock
    from tasks.artifacts import Workspace

    params = config.params
    check_inputs_section(Path("."), params)
    with workspace_lock(Path("."), on_wait=lambda message: print(message, file=sys.stderr)):
        metrics = run_stage(args.name, params, Workspace(Path(".")))
    for key, value in metrics.items():
        print(f"{key}: {value}")
    return 0


def up(args: argparse.Namespace, config: Config) -> int:
    from flows.stack.servers import up as start_stack

    return start_stack(config, Path("."))


def down(args: argparse.Namespace, config: None) -> int:
    from flows.stack.servers import down as stop_stack

    return stop_stack(Path("."))


def deploy(args: argparse.Namespace, config: Config) -> int:
    from flows.stack.deployments import deploy as deploy_to_pools

    return deploy_to_pools(config.params, config.stack, Path("."))


def serve(args: argparse.Namespace, config: Config) -> int:
    from flows.stack.deployments import serve as serve_deployments

    serve_deployments(config.params, config.stack)
    return 0


def bench(args: argparse.Namespace, config: Config) -> int:
    from flows.bench import bench_command

    return bench_command(config.params, args.overhead)


class RecipesHelp(argparse.Action):
    """`bench -h`: the help, then every recipe of the registry (flows/recipes.py `RECIPES`) in the
    table's order, with its docstring. Gotcha: the registry is imported only here, as it loads
    TensorFlow (seconds), which no other help waits for."""

    def __init__(self, option_strings: list[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0,
                         help="show this help and every recipe, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from flows.recipes import RECIPES

        column = max(map(len, RECIPES)) + 4
        parser.epilog = "recipes:\n" + "\n".join(
            textwrap.fill(" ".join(recipe.__doc__.split()), _help_width(),
                          initial_indent=f"  {name}".ljust(column), subsequent_indent=" " * column)
            for name, recipe in RECIPES.items())
        parser.print_help()
        parser.exit()


def _help_width() -> int:
    """The width argparse wraps its help to: the terminal's, less 2."""
    return shutil.get_terminal_size().columns - 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shrinkflow", description="Compress trained Keras models into small, fast INT8 TFLite models."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    run_cmd = commands.add_parser(
        "run", help="run the whole pipeline as a Prefect flow, tracked in MLflow",
        description="Run load -> search -> sparsify -> distill -> quantize -> evaluate and print a "
                    "summary.",
    )
    run_cmd.set_defaults(command=run)
    stage_cmd = commands.add_parser(
        "stage", help="run one stage from the files the previous stage left (used by dvc.yaml)",
        description="Run one stage outside Prefect and MLflow: reads and writes artifacts/ and metrics/.",
    )
    stage_cmd.add_argument("name", help="load, search, sparsify, distill, quantize or evaluate")
    stage_cmd.set_defaults(command=stage)
    init_cmd = commands.add_parser(
        "init", help="make this directory a git + DVC project (what `make run` does first)",
        description="git init, dvc init, params.yaml with every key and its `inputs:` section, and "
                    "a first commit, each only where missing.",
    )
    init_cmd.set_defaults(command=init)
    up_cmd = commands.add_parser(
        "up", help="start Prefect and MLflow servers and serve the nightly deployment",
        description="Start the local stack on stack.host (params.yaml's `stack:` section); "
                    "Ctrl-C or `shrinkflow down` stops it.",
    )
    up_cmd.set_defaults(command=up)
    commands.add_parser("down", help="stop the stack started by `shrinkflow up`").set_defaults(command=down)
    deploy_cmd = commands.add_parser(
        "deploy", help="deploy infra/prefect.yaml to its work pool for `prefect worker`s",
        description="Check that the work pools exist on PREFECT_API_URL, then `prefect deploy` "
                    "infra/prefect.yaml's deployment on stack.cron in stack.timezone, with this "
                    "project's params as defaults.",
    )
    deploy_cmd.set_defaults(command=deploy)
    serve_cmd = commands.add_parser("serve", help="serve the deployments on a running Prefect server "
                                                  "(what `up` runs)")
    serve_cmd.set_defaults(command=serve)
    bench_cmd = commands.add_parser(
        "bench", help="compare shrinkflow with the standard recipes (PTQ, tfmot pruning, QAT, ...)",
        add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Build every recipe below from the configured data and teacher, measure each with the "
            "pipeline's evaluator, write metrics/bench.json, reports/bench.md and plots/bench.png, "
            "log an MLflow run named bench.", _help_width()),
    )
    bench_cmd.add_argument("-h", "--help", action=RecipesHelp)
    bench_cmd.add_argument("--overhead", action="store_true",
                           help="also time `shrinkflow run` cold and warm in a fresh copy of the "
                                "project (two more full runs)")
    bench_cmd.set_defaults(command=bench)
    for sub in (run_cmd, stage_cmd, init_cmd, up_cmd, deploy_cmd, serve_cmd, bench_cmd):
        sub.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="FILE",
                         help="config file (default: params.yaml; built-in defaults if absent)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one param, e.g. --set distill.temperature=2 (repeatable)")
    return parser


if __name__ == "__main__":
    entry()

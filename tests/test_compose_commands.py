"""Every ``churnwatch ...`` command of docker-compose.yml and the Dockerfile, parsed by the CLI.

No Docker engine runs here, so a service whose command the CLI rejects would only show up as a
container exiting 2 and restarting in a loop. These tests build the parser ``churnwatch`` builds
(:func:`churnwatch.cli.build_parser`) and parse each command's arguments with it: the effective
command of every service (its entrypoint and command, or the image's ENTRYPOINT and CMD when
the service builds the Dockerfile and leaves them out), every healthcheck, and every
``churnwatch`` the Dockerfile runs (CMD, ENTRYPOINT, RUN).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from churnwatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _argv(value: Any) -> list[str]:
    """A compose or Dockerfile command as argv (exec form as it is, shell form split)."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined, comments dropped.

    >>> dockerfile_instructions('# c\\nRUN a \\\\\\n    && b\\nCMD ["x"]\\n')
    [('RUN', 'a && b'), ('CMD', '["x"]')]
    """
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        name, _, rest = whole.partition(" ")
        out.append((name.upper(), rest.strip()))
    return out


def _dockerfile_form(arguments: str) -> list[str]:
    """CMD / ENTRYPOINT arguments: JSON exec form, else shell form."""
    if arguments.startswith("["):
        return [str(v) for v in json.loads(arguments)]
    return shlex.split(arguments)


def _churnwatch_in_shell(script: str) -> list[list[str]]:
    """The ``churnwatch ...`` commands of a shell line (split at ``&&``, ``||``, ``;``)."""
    commands = []
    for part in re.split(r"&&|\|\||;", script):
        words = shlex.split(part)
        if words and Path(words[0]).name == "churnwatch":
            commands.append(words)
    return commands


def dockerfile_commands() -> dict[str, list[str]]:
    """Every churnwatch command of the Dockerfile, by where it is; ``image`` is the image's
    effective command (ENTRYPOINT + CMD)."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    entrypoint = [_dockerfile_form(a) for n, a in instructions if n == "ENTRYPOINT"]
    cmd = [_dockerfile_form(a) for n, a in instructions if n == "CMD"]
    out: dict[str, list[str]] = {}
    image = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    if image:
        out["image"] = image
    for number, (name, arguments) in enumerate(instructions):
        if name == "RUN":
            for k, words in enumerate(_churnwatch_in_shell(arguments)):
                out[f"RUN #{number}.{k}"] = words
    return out


def compose_commands() -> dict[str, list[str]]:
    """The effective command of every compose service that runs churnwatch, and every
    healthcheck that does, by service."""
    services: dict[str, dict[str, Any]] = yaml.safe_load(
        COMPOSE.read_text(encoding="utf-8"))["services"]
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    image_entrypoint = [_dockerfile_form(a) for n, a in instructions if n == "ENTRYPOINT"]
    image_cmd = [_dockerfile_form(a) for n, a in instructions if n == "CMD"]
    out: dict[str, list[str]] = {}
    for name, service in services.items():
        ours = service.get("build") == "."
        entrypoint = _argv(service.get("entrypoint")) if "entrypoint" in service else (
            image_entrypoint[-1] if ours and image_entrypoint else [])
        command = _argv(service.get("command")) if "command" in service else (
            image_cmd[-1] if ours and image_cmd else [])
        argv = entrypoint + command
        if argv and Path(argv[0]).name == "churnwatch":
            out[name] = argv
        test = service.get("healthcheck", {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD" and len(test) > 1 \
                and Path(str(test[1])).name == "churnwatch":
            out[f"{name} healthcheck"] = [str(t) for t in test[1:]]
        elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
            for k, words in enumerate(_churnwatch_in_shell(" ".join(map(str, test[1:])))):
                out[f"{name} healthcheck.{k}"] = words
    return out


def parse_error(argv: list[str]) -> str | None:
    """What ``churnwatch``'s own argument parser says of ``argv`` (``None``: accepted)."""
    parser = build_parser()
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exc:
            return errors.getvalue().strip() or f"exit status {exc.code}"
    return None


def test_compose_runs_churnwatch_in_the_monitor_and_the_simulator() -> None:
    commands = compose_commands()
    assert {"churnwatch", "simulator"} <= set(commands), commands
    assert dockerfile_commands()["image"][:2] == ["churnwatch", "run"]


@pytest.mark.parametrize("where", sorted(compose_commands()))
def test_every_compose_command_parses_with_the_cli_parser(where: str) -> None:
    argv = compose_commands()[where]
    error = parse_error(argv)
    assert error is None, f"docker-compose.yml, {where}: {shlex.join(argv)}\n{error}"


@pytest.mark.parametrize("where", sorted(dockerfile_commands()))
def test_every_dockerfile_command_parses_with_the_cli_parser(where: str) -> None:
    argv = dockerfile_commands()[where]
    error = parse_error(argv)
    assert error is None, f"Dockerfile, {where}: {shlex.join(argv)}\n{error}"


def test_the_parser_check_rejects_an_unknown_option() -> None:
    """The check itself can fail: the producer's old command is refused."""
    error = parse_error(["churnwatch", "simulate", "--publish", "--rate", "200"])
    assert error is not None and "unrecognized arguments: --rate 200" in error
    assert parse_error(["churnwatch", "simulate", "--publish"]) is None

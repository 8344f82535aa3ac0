"""User errors at the command line: one clear line (exit 2) instead of a traceback, with a
"did you mean" for unknown config keys. ``--debug`` or ``DRL_DEBUG=1`` shows the traceback."""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError,
               IsADirectoryError, RuntimeError, argparse.ArgumentError, MisconfigurationException)
"""Exceptions printed as one message by ``drlightning``: bad settings, missing files, failed checks."""

MULTI_GPU = ("multi-GPU rotation training goes through run.launch.mode=parallel under torchrun "
             "(docs/usage.md#large-models-and-many-gpus)")


class UnknownKeyError(ValueError):
    """A config key or flag the command does not have."""


def known_keys(parser) -> list[str]:
    """Every dotted config key of ``parser`` (of all its subcommands, if it has them)."""
    action = getattr(parser, "_subcommands_action", None)
    parsers = list(action._name_parser_map.values()) if action is not None else [parser]
    return sorted({key for p in parsers for key in p.get_defaults().keys()})


def one_line(message: str) -> str:
    """``message`` on one line: jsonargparse's nested report of a bad value becomes
    "<key>=<value>; allowed: <types>", anything else its lines joined."""
    text = message.strip()
    if "\n" not in text:
        return text
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    unknown = re.search(r"Option '([\w.]+)' is not accepted", text)
    if keys and unknown:
        return f"unknown option '{'.'.join(keys)}.{unknown.group(1)}'"
    inner = text[text.rfind("Parser key"):] if keys else text  # the innermost key's report
    value = re.search(r"(?:Given|Got) value: (.*)", inner)
    inner = inner[:value.end()] if value else inner
    union = re.findall(r"Subtypes: \[(.*)\]", inner)
    found = re.findall(r"<class '([\w.]+)'>", union[-1]) if union else re.findall(
        r"Expected an? <class '([\w.]+)'>", inner)
    types = list(dict.fromkeys(t.rsplit(".", 1)[-1] for t in found))
    if keys and value and types:
        allowed = " or ".join("null" if t == "NoneType" else t for t in types)
        return f"{'.'.join(keys)}={value.group(1).strip()}; allowed: {allowed}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def config_paths(argv: list[str]) -> list[str]:
    """The files named by ``--config``/``-c`` on the command line (existing ones only: anything
    else is left to the parser, which also takes inline YAML there)."""
    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
    paths += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    return [path for path in paths if Path(path).is_file()]


def read_config(path: str) -> dict:
    """The mapping in a ``--config`` file; malformed YAML (or JSON), a file that is empty or
    holds no mapping is a one-line ValueError naming the file and the line."""
    import yaml

    allowed = "allowed: a YAML mapping of option names to values (model:, data:, trainer:, eval:, …)"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"--config {path}: not a UTF-8 text file (byte {err.start}); {allowed}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        context = (f" ({err.context} at line {err.context_mark.line + 1})"
                   if err.context and err.context_mark else "")
        tabs = "; indent with spaces, not tabs" if re.search(r"tab|\\t|\t", str(err.problem)) else ""
        raise ValueError(f"--config {path}: not valid YAML at {where}: {err.problem}{context}"
                         f"{tabs}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({one_line(str(err))})") from None
    if not isinstance(data, dict):
        kind = {str: "a string", list: "a list", bool: "a boolean", int: "a number",
                float: "a number"}.get(type(data), f"a {type(data).__name__}")
        found = "nothing" if data is None else f"{kind} ({str(data)[:40]!r})"
        raise ValueError(f"--config {path}: the top level holds {found}, not a mapping; {allowed}")
    return data


def check_accelerator(trainer, section: str = "trainer") -> None:
    """Refuse ``trainer.accelerator`` naming a device kind this machine does not have."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    name = trainer.get("accelerator") if hasattr(trainer, "get") else None
    if not isinstance(name, str) or name == "auto":
        return
    names = sorted(AcceleratorRegistry.available_accelerators())
    here = [n for n in names if AcceleratorRegistry[n]["accelerator"].is_available()]
    wanted = ["cuda", "mps"] if name == "gpu" else [name]
    if any(n in here for n in wanted) or not any(n in names for n in wanted):
        return  # available, or a name Lightning itself refuses with the list of valid names
    raise ValueError(f"{section}.accelerator={name!r}: no {name} device on this machine; allowed "
                     f"here: {', '.join(['auto', *here])}")


def check_one_process(trainer) -> None:
    """Refuse ``trainer.devices``/``trainer.num_nodes`` that start more than one process: the
    layer loop runs in one, and a second one would write the same run directory."""
    import torch

    nodes, devices = trainer.get("num_nodes", 1), trainer.get("devices", 1)
    why = ("the layer loop runs in one process (a second one Lightning starts would write the same "
           f"run directory); {MULTI_GPU}")
    if nodes not in (None, 1):
        raise ValueError(f"trainer.num_nodes={nodes!r}: allowed: 1; {why}")
    gpus = (torch.cuda.device_count() if torch.cuda.is_available()
            and str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else 1)
    one = (devices in (1, "1") or (devices == "auto" and gpus <= 1)
           or (isinstance(devices, list | tuple) and len(devices) == 1)
           or (isinstance(devices, str) and re.fullmatch(r"\s*\d+\s*,\s*", devices) is not None))
    if not one:
        many = f" (here: {gpus} GPUs)" if devices == "auto" else ""
        raise ValueError(f"trainer.devices={devices!r}{many}: allowed: 1, 'auto' on a machine with one "
                         f"device, or one device index such as [0]; {why}")


def unknown_key_message(error: str, keys: list[str]) -> str:
    """The parser's message plus the closest known key for each unknown one."""
    unknown = re.findall(r"option '([\w.]+)'", error) + re.findall(r"--([\w.]+)", error)
    hints = []
    for key in dict.fromkeys(unknown):
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        if close:
            hints.append(f"'{key}': did you mean '{close[0]}'?")
    return error + ("; " + "; ".join(hints) if hints else "")


CLI_SETTINGS = {"seed_everything_default": 0, "auto_configure_optimizers": False,
                "parser_kwargs": {"exit_on_error": False}}
"""LightningCLI arguments both of drlightning's CLIs share: seed 0 unless set, the modules' own
optimisers, and parsing errors raised (so :class:`FriendlyParsing` can explain them)."""


def parse_friendly(parser, args: list[str], defaults: bool = True, keys: tuple[str, ...] = ()):
    """``parser.parse_args(args)`` (a parser made with ``exit_on_error=False``) whose errors are
    one-line :class:`UnknownKeyError` with suggestions (among its keys and ``keys``)."""
    try:
        return parser.parse_args(args, defaults=defaults)
    except argparse.ArgumentError as err:
        raise UnknownKeyError(unknown_key_message(one_line(str(err)), [*known_keys(parser), *keys])) from None


class FriendlyParsing:
    """LightningCLI mixin: parsing errors become :class:`UnknownKeyError` with suggestions
    (pass ``parser_kwargs={"exit_on_error": False}`` so that they are raised, not printed)."""

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            raise UnknownKeyError(unknown_key_message(one_line(str(err)), known_keys(parser))) from None


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full: an ``OSError`` with ENOSPC or
    EDQUOT, or a writer (safetensors, torch) that reports the OS error in its own message."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text

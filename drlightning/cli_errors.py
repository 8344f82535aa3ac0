"""User errors at the command line: one clear line (exit 2) instead of a traceback, with a
"did you mean" for unknown config keys. ``--debug`` or ``DRL_DEBUG=1`` shows the traceback."""

from __future__ import annotations

import argparse
import difflib
import re

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError,
               IsADirectoryError, RuntimeError, argparse.ArgumentError)
"""Exceptions printed as one message by ``drlightning``: bad settings, missing files, failed checks."""


class UnknownKeyError(ValueError):
    """A config key or flag the command does not have."""


def known_keys(parser) -> list[str]:
    """Every dotted config key of ``parser`` (of all its subcommands, if it has them)."""
    action = getattr(parser, "_subcommands_action", None)
    parsers = list(action._name_parser_map.values()) if action is not None else [parser]
    return sorted({key for p in parsers for key in p.get_defaults().keys()})


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


class FriendlyParsing:
    """LightningCLI mixin: parsing errors become :class:`UnknownKeyError` with suggestions
    (pass ``parser_kwargs={"exit_on_error": False}`` so that they are raised, not printed)."""

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            raise UnknownKeyError(unknown_key_message(str(err), known_keys(parser))) from None

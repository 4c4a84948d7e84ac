"""The ``methods`` sub-command: list every registered unlearning method and its hyperparameters."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, TextIO

from halluc_bench.unlearning.base import UnlearnerConfig, describe_methods


def add_methods_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``methods`` to an argparse sub-parser set; the parsed namespace's ``handler`` runs it."""
    parser = subparsers.add_parser(
        "methods",
        help="list the registered unlearning methods and their hyperparameter defaults",
        description="List every unlearning method (built-in and plug-in) with its hyperparameter defaults.",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    parser.set_defaults(handler=run_methods_command)
    return parser


def run_methods_command(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Print the method table (or JSON) and return the exit status 0."""
    out = stream or sys.stdout
    rows = describe_methods()
    if args.format == "json":
        json.dump(rows, out, indent=2, default=str)
        out.write("\n")
        return 0
    out.write(format_methods_table(rows))
    return 0


def format_methods_table(rows: list[dict[str, Any]]) -> str:
    """Render the shared settings once, then one line per method with the settings it adds or changes."""
    shared = {item.name: item.default for item in dataclasses.fields(UnlearnerConfig)}
    lines = ["Shared settings: " + ", ".join(f"{name}={value!r}" for name, value in shared.items()), ""]
    width = max((len(row["name"]) for row in rows), default=6)
    lines.append(f"{'method'.ljust(width)}  hyperparameters (besides or changing the shared ones)")
    for row in rows:
        own = {
            name: value
            for name, value in row["hyperparameters"].items()
            if name not in shared or shared[name] != value
        }
        settings = ", ".join(f"{name}={value!r}" for name, value in own.items()) or "-"
        lines.append(f"{row['name'].ljust(width)}  {settings}")
        lines.append(f"{''.ljust(width)}  {row['summary']}")
    return "\n".join(lines) + "\n"

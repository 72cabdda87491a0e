"""The `onnxshrink` command: a thin typer layer over the library API.

Each command is a function in its own module, registered here.
"""

from __future__ import annotations

import signal

import typer

from onnxshrink.cli._common import interrupted
from onnxshrink.cli.inspect import inspect_command
from onnxshrink.cli.pack import pack_command, unpack_command
from onnxshrink.cli.prune import prune_command
from onnxshrink.cli.quantize import quantize_command
from onnxshrink.cli.shrink import recipes_command, shrink_command
from onnxshrink.cli.validate import validate_command
from onnxshrink.runtime import fix_mmap_threshold

app = typer.Typer(
    name="onnxshrink",
    help="Make ONNX models smaller and faster: prune, quantize, pack; every step validated in onnxruntime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("inspect")(inspect_command)
app.command("validate")(validate_command)
app.command("pack")(pack_command)
app.command("unpack")(unpack_command)
app.command("quantize")(quantize_command)
app.command("prune")(prune_command)
app.command("shrink")(shrink_command)
app.command("recipes")(recipes_command)


def main() -> None:
    fix_mmap_threshold()  # peak RSS that does not depend on the order of earlier allocations
    try:
        app()
    except KeyboardInterrupt:  # before a command's own handler is in place (typer building the command)
        interrupted()
    except SystemExit as done:
        # The command is over and its output, if any, is in place. Python's teardown
        # (freeing the model, onnxruntime's destructors) takes a moment with the
        # default SIGINT disposition restored; a Ctrl-C then would kill the process
        # with no message and report "interrupted" for work that completed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise done

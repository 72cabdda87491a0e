"""The `onnxshrink` command: a thin typer layer over the library API.

Each command is a function in its own module, registered here.
"""

from __future__ import annotations

import signal
from typing import Annotated

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
    # Plain usage errors (usage line, hint, "Error: ..." last) and plain help: no boxes, nothing cut when piped.
    rich_markup_mode=None,
)



def _print_version(value: bool) -> None:
    if value:
        from onnxshrink import __version__

        typer.echo(f"onnxshrink {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Make ONNX models smaller and faster: prune, quantize, pack; every step validated in onnxruntime."""


app.command("inspect")(inspect_command)
app.command("validate")(validate_command)
app.command("pack")(pack_command)
app.command("unpack")(unpack_command)
app.command("quantize")(quantize_command)
app.command("prune")(prune_command)
app.command("shrink")(shrink_command)
app.command("recipes")(recipes_command)


def main() -> None:
    try:
        fix_mmap_threshold()  # peak RSS that does not depend on the order of earlier allocations
        app(prog_name="onnxshrink")  # also when run as python -m or -c: usage lines name the command
    except KeyboardInterrupt:  # before a command's own handler is in place (typer building the command)
        interrupted()
    except SystemExit as done:
        # The command is over and its output, if any, is in place. Python's teardown
        # (freeing the model, onnxruntime's destructors) takes a moment with the
        # default SIGINT disposition restored; a Ctrl-C then would kill the process
        # with no message and report "interrupted" for work that completed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise done

"""What every command shares: option types, output, error handling, progress."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional

import typer
from rich.console import Console

from onnxshrink.errors import OnnxShrinkError, UsageError
from onnxshrink.fileio import atomic_output

console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors; no progress bars.")]
JsonOption = Annotated[Optional[Path], typer.Option("--json", help="Write a machine-readable report to this file.")]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output file (written atomically).")]


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into one line on stderr and the exit code they carry;
    Ctrl-C into exit 130. Unexpected exceptions are bugs: one line and exit 3,
    or the traceback with ONNXSHRINK_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OnnxShrinkError as e:
            err_console.print(f"onnxshrink: error: {e.message}", markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            interrupted()
        except typer.Exit:
            raise
        except Exception as e:  # a bug in onnxshrink, not the user's fault
            if os.environ.get("ONNXSHRINK_DEBUG"):
                raise
            message = " ".join(str(e).split())[:300]
            err_console.print(
                f"onnxshrink: internal error: {type(e).__name__}: {message} "
                "(rerun with ONNXSHRINK_DEBUG=1 for the traceback and report it)",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(3) from None

    return wrapper


def interrupted() -> NoReturn:
    """Ctrl-C: one line and exit 130 (outputs are atomic, so none was written)."""
    err_console.print("onnxshrink: interrupted; no output written", markup=False)
    raise SystemExit(130)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON, atomically; non-finite floats become null."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(report), indent=2, sort_keys=False) + "\n")


def parse_shapes(shapes: list[str] | None) -> dict[str, list[int]]:
    """``name=1x3x224x224`` strings to a dict of dims."""
    result: dict[str, list[int]] = {}
    for item in shapes or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            result[name] = [int(d) for d in dims.lower().split("x")]
            if any(d <= 0 for d in result[name]):
                raise ValueError
        except ValueError:
            raise UsageError(f"--shape '{item}': expected NAME=DxDxD with positive dims, e.g. input=1x3x224x224") from None
    return result


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback ``(task, done, total)``: a rich bar on a terminal,
    nothing when quiet or when stderr is not a TTY."""
    if not show_progress(quiet):
        yield lambda task, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total or None)
            bar.update(tasks[task], completed=done, total=total or None)

        yield update


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"

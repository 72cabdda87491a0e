"""What every command shares: option types, output, error handling, progress."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Mapping, NoReturn, Optional, Sequence

import typer
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from onnxshrink.cli._paths import check_files
from onnxshrink.errors import OnnxShrinkError, UsageError
from onnxshrink.fileio import atomic_output
from onnxshrink.units import binary_bytes

console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors; no progress bars.")]
JsonOption = Annotated[Optional[Path], typer.Option("--json", help="Write a machine-readable report to this file ('-': standard output; the summary then goes to stderr).")]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output file (written atomically).")]
StateOption = Annotated[Optional[list[str]], typer.Option("--state", help="A stateful model's state: OUT=IN, the output fed back as that input on the next step (repeatable); found by name when omitted (state/stateN, h0/hn...). The data's rows then run in order in a closed loop.")]


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
        finally:
            console.file = None  # type: ignore[assignment]  # back to stdout (declare_files may have moved it)

    return wrapper


def declare_files(inputs: Mapping[str, Optional[Path | str]], outputs: Mapping[str, Optional[Path]], *,
                  models: Sequence[str] = ("MODEL",), model_outputs: Sequence[str] = ("-o",)) -> None:
    """Check the command's files before any work (see :mod:`onnxshrink.cli._paths`):
    exit 2 for an output that would write over an input or cannot be written.
    When a report goes to standard output, the summary goes to stderr."""
    if check_files(inputs, outputs, models=models, model_outputs=model_outputs):
        console.file = sys.stderr


class _SummaryTable(Table):
    """A table whose first column holds names (model, layer, tensor, recipe).

    Names never fold or lose characters: when the table cannot fit the width
    with every name whole (80 columns, piped output), it switches to a plain
    layout, each row a name line and an indented ``header value`` line."""

    name_width = 0

    def add_row(self, *cells: Any, **options: Any) -> None:
        if cells and isinstance(cells[0], str):
            self.name_width = max(self.name_width, cell_len(cells[0]))
        super().add_row(*cells, **options)

    def _narrowest(self) -> int:
        """The width the table needs with whole names and the other columns
        wrapped at every space: each column's longest word, plus padding and borders."""
        widths = [max((cell_len(w) for text in (c.header, *c.cells) for w in str(text).split()), default=1)
                  for c in self.columns[1:]]
        return sum(widths) + max(self.name_width, cell_len(str(self.columns[0].header))) + 3 * len(self.columns) + 1

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.columns and self._narrowest() <= options.max_width:
            self.columns[0].no_wrap = True
            yield from super().__rich_console__(console, options)
            return
        if self.title:
            yield Text(str(self.title), style="bold")
        headers = [str(c.header) for c in self.columns]
        for row in zip(*(c.cells for c in self.columns)):
            yield Text(str(row[0]), style="bold")
            rest = "; ".join(f"{h}: {v}" for h, v in zip(headers[1:], row[1:]) if str(v).strip())
            if rest:
                yield Padding(Text(rest, overflow="fold"), (0, 0, 0, 2))


def summary_table(*headers: str, **options: Any) -> Table:
    """A rich table whose cells never lose text (no ellipsis at any width, 80
    columns or piped): values wrap or fold, and the first column, the names
    (model, layer, tensor, recipe), stays whole, in a plain layout if need be."""
    table = _SummaryTable(**options)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


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


def write_json(path: Path, report: dict[str, Any], *, schema: str) -> None:
    """Write ``report`` as JSON, atomically (``-``: standard output), its
    ``schema`` id first (``onnxshrink.<command>/<version>``, each documented
    field by field in docs/json.md); non-finite floats become null."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_jsonable({"schema": schema, **report}), indent=2, sort_keys=False) + "\n")


def say_written(path: Optional[Path], what: str = "JSON report") -> None:
    """``JSON report written to PATH`` on the summary's stream (stderr when
    standard output carries a report); nothing for None or ``-``. The line is
    never wrapped: the path stays whole for whoever reads it back."""
    if path is not None and str(path) != "-":
        console.print(f"{what} written to {path}", markup=False, soft_wrap=True)


def print_metrics(report: Mapping[str, Any], validation: Optional[Mapping[str, Any]]) -> None:
    """The headline metrics, one ``label: value`` line each, labelled as in the
    HTML report (:func:`onnxshrink.report.metrics.metric_rows`); a slower output in red."""
    from onnxshrink.report.metrics import metric_rows

    for label, value, tone in metric_rows(report, validation, arrow="->"):
        console.print(f"{label}: {value}", markup=False, style="red" if tone == "bad" else None)


def check_accuracy_flag(max_accuracy_drop: float | None, eval_data: Path | None) -> None:
    """``--max-accuracy-drop`` given: it needs ``--eval`` data with labels, checked
    before any work (exit 2); see :func:`onnxshrink.validation.accuracy_gate_basis`."""
    if max_accuracy_drop is None:
        return
    if eval_data is None:
        raise UsageError("--max-accuracy-drop is measured on labelled eval data: give --eval DATA, or --min-cosine X")
    from onnxshrink.validation import accuracy_gate_basis

    accuracy_gate_basis(eval_data, explicit=True)


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


# A plain progress line for a long step at most this often (seconds), when piped.
PLAIN_STEP_INTERVAL = 30.0


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _left(status: Any) -> str:
    """``about 3m10s left at most`` from a search's TrialProgress, or that the estimate comes later."""
    if status.remaining is None:
        return "estimate after the first trial"
    return f"about {_clock(status.remaining)} left at most"


class Progress:
    """A command's progress callbacks: ``progress(task, done, total)`` for the
    steps inside the work, ``progress.trial(status)`` for shrink's search
    trials (a :class:`~onnxshrink.search.schedule.TrialProgress`).

    On a terminal a rich bar, the trial row with its number, what it does and
    the time left; when stderr is piped and ``plain`` is set, a plain line per
    trial (and for a long step every PLAIN_STEP_INTERVAL seconds) with the
    elapsed time and the estimate, so a pipeline's log shows life; nothing when
    quiet."""

    def __init__(self, bar: Any = None, plain: bool = False):
        self.bar, self.plain = bar, plain
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}  # task -> when its first report came
        self.begun = self.last_line = time.monotonic()  # when the work began, the last plain line was printed
        self.current = "starting"
        self.stopped = threading.Event()
        if plain:  # work that reports nothing for long (one big run, a build) still shows life
            threading.Thread(target=self._heartbeat, name="onnxshrink-progress", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self.stopped.wait(PLAIN_STEP_INTERVAL / 3):
            now = time.monotonic()
            if now - self.last_line >= PLAIN_STEP_INTERVAL:
                self.last_line = now
                err_console.print(f"onnxshrink:   still working ({self.current}), {_clock(now - self.begun)} elapsed",
                                  markup=False, highlight=False)

    def close(self) -> None:
        self.stopped.set()

    def __call__(self, task: str, done: int, total: int) -> None:
        if task == "search":  # shrink's trials have their own row (trial)
            return
        if self.bar is not None:
            if task not in self.tasks:
                self.tasks[task] = self.bar.add_task(task, total=total or None, eta="")
            self.bar.update(self.tasks[task], completed=done, total=total or None)
        elif self.plain:
            self._plain_step(task, done, total)

    def _plain_step(self, task: str, done: int, total: int) -> None:
        self.current = task
        now = time.monotonic()
        start = self.started.setdefault(task, now)
        if now - self.last_line < PLAIN_STEP_INTERVAL:
            return
        self.last_line = now
        left = (now - start) * (total - done) / done if done and total and done < total else None
        err_console.print(f"onnxshrink:   {task} {done}/{total or '?'}, {_clock(now - start)} in this step"
                          + (f", about {_clock(left)} left in it" if left is not None else ""),
                          markup=False, highlight=False)

    def trial(self, status: Any) -> None:
        head = f"trial {status.index}/{status.planned}"
        if self.bar is not None:
            if "trials" not in self.tasks:
                self.tasks["trials"] = self.bar.add_task("trials", total=status.planned, eta="")
            done = status.index if status.result is not None else status.index - 1
            self.bar.update(self.tasks["trials"], description=f"{head}: {status.doing}", completed=done,
                            total=status.planned, eta=_left(status))
            if status.result is not None:
                self.bar.console.print(f"  {head}: {status.result}", markup=False, highlight=False)
        elif self.plain:
            what = status.result if status.result is not None else status.doing
            self.current = f"{head}: {status.doing}"
            err_console.print(f"onnxshrink: {head}: {what} ({_clock(status.elapsed)} elapsed, {_left(status)})",
                              markup=False, highlight=False)
            self.last_line = time.monotonic()


@contextlib.contextmanager
def progress_bar(quiet: bool, plain: bool = False) -> Iterator[Progress]:
    """The command's :class:`Progress`: a rich bar on a terminal; when stderr
    is not a TTY, plain lines if ``plain`` (shrink's long search), else
    nothing; nothing at all when quiet."""
    if not show_progress(quiet):
        progress = Progress(plain=plain and not quiet)
        try:
            yield progress
        finally:
            progress.close()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[eta]}"), console=err_console, transient=True) as bar:
        yield Progress(bar)


def human_bytes(n: float | None) -> str:
    """A byte count in binary units labelled so (KiB, MiB): :func:`onnxshrink.units.binary_bytes`."""
    return binary_bytes(n)

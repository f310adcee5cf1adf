"""How a command prints what it found: JSON, a ``rich`` table, or plain rows.

``Output`` is made per command from its ``--json`` flag and the global ``--rich`` /
``--plain`` choice (default: rich on a terminal when the optional ``rich`` package is
installed, plain otherwise, so pipes and scripts always get plain rows):

* JSON (``--json``): one document on stdout, for scripts;
* plain: one record per line, tab-separated fields, each escaped by ``text_field``
  (a value from a job can neither add a row or a column nor colour the terminal);
* rich: the same escaped text in tables and panels; markup in values is never read.

Progress bars (``Output.progress``) go to stderr, and only with rich on a terminal (or
``--rich``), so stdout keeps only the data.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from ..errors import install_hint
from .base import MAX_FIELD_CHARS, cell, row, text_field

__all__ = ["MAX_BLOCK_CHARS", "Output", "have_rich", "output", "show_table", "span", "when"]

#: Most characters of one block of text output (``Output.block``: a job's data, result,
#: traceback, log lines) before it is cut with a line saying how much more there is
#: (``--json`` prints it all). Each field of text output is bounded too
#: (``base.MAX_FIELD_CHARS``).
MAX_BLOCK_CHARS = 65_536


def when(ms: int | None) -> str:
    """A time in ms since the epoch as ISO 8601 UTC to the second ("-" for none)."""
    if ms is None:
        return "-"
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(ms)


def span(ms: float | None) -> str:
    """A duration in ms, short: ``850ms``, ``12.5s``, ``4m05s``, ``3h20m``, ``2d04h``."""
    if ms is None:
        return "-"
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    if ms < 1000:
        return f"{sign}{ms:.0f}ms"
    s = ms / 1000
    if s < 60:
        return f"{sign}{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{sign}{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{sign}{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{sign}{d}d{h:02d}h"


def _bounded_lines(text: str | Sequence[str]) -> tuple[list[str], str]:
    """The lines of ``text`` to show, escaped, about ``MAX_BLOCK_CHARS`` characters in
    all (each at most ``MAX_FIELD_CHARS``), and what is left out ("" for nothing)."""
    if isinstance(text, str):
        head = text[:MAX_BLOCK_CHARS]
        cut = len(text) - len(head)
        lines = [cell(ln) for ln in head.splitlines()]
        return lines, f"{cut:,} more characters" if cut else ""
    shown: list[str] = []
    used = 0
    for ln in text:
        if used >= MAX_BLOCK_CHARS:
            break
        shown.append(cell(ln, min(MAX_FIELD_CHARS, max(MAX_BLOCK_CHARS - used, 100))))
        used += len(shown[-1])
    left = len(text) - len(shown)
    return shown, f"{left:,} more line(s)" if left else ""


def have_rich() -> bool:
    """Whether the optional ``rich`` package can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _style() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return "auto"
    style = ctx.find_root().params.get("style")
    return style if isinstance(style, str) else "auto"


def show_table(
    columns: Sequence[str], rows: Sequence[Sequence[object]], header: bool = True
) -> None:
    """Rows under ``columns`` as the running command prints text: a rich table, or
    plain lines (the column names first when ``header``). Given to the features'
    command groups, which print their lists with it."""
    output().table(columns, rows, header=header)


def output(as_json: bool = False) -> Output:
    """The ``Output`` of the running command."""
    return Output(as_json=as_json, style=_style())


class Output:
    """Prints one command's results (see the module docstring).

    Args:
        as_json: ``--json`` was given.
        style: ``"rich"`` (forced), ``"plain"`` (forced) or ``"auto"``.
    """

    def __init__(self, *, as_json: bool = False, style: str = "auto") -> None:
        self.as_json = as_json
        self.forced = style == "rich"
        if style == "rich" and not have_rich():
            raise click.UsageError(
                "--rich needs the optional package 'rich': " + install_hint("cli")
            )
        self.rich = not as_json and (
            self.forced or (style == "auto" and sys.stdout.isatty() and have_rich())
        )

    # ------------------------------------------------------------------ consoles
    def _console(self, err: bool = False) -> Any:
        from rich.console import Console

        # Made per call: stdout may be replaced between calls (tests, redirections).
        return Console(
            file=sys.stderr if err else sys.stdout,
            highlight=False,
            markup=False,
            emoji=False,
            soft_wrap=False,
        )

    @staticmethod
    def _cell(value: object) -> Any:
        from rich.text import Text

        return Text(cell("-" if value is None else value))

    # ------------------------------------------------------------------ printing
    def json(self, obj: Any) -> None:
        """``obj`` as one JSON document on stdout."""
        click.echo(json.dumps(obj, indent=2, default=str))

    def line(self, *fields: object) -> None:
        """One plain line of escaped fields (a message, or a row of a plain table)."""
        click.echo(row(*fields))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[object]],
        *,
        title: str | None = None,
        empty: str | None = None,
        header: bool = False,
    ) -> None:
        """Rows under ``columns``: a rich table, or one plain line per row (with the
        column names first when ``header``). ``empty`` is printed instead of an empty
        table (plain output prints nothing for no rows unless it is given)."""
        if not rows and empty is not None:
            self.line(empty)
            return
        if not self.rich:
            if header:
                self.line(*columns)
            for r in rows:
                self.line(*r)
            return
        from rich.table import Table

        table = Table(title=None if title is None else cell(title), title_justify="left")
        for c in columns:
            table.add_column(text_field(c), overflow="fold")
        for r in rows:
            table.add_row(*(self._cell(v) for v in r))
        self._console().print(table)

    def fields(self, pairs: Sequence[tuple[str, object]], *, title: str | None = None) -> None:
        """Named values: a two-column rich table, or ``name<TAB>value`` lines."""
        if not self.rich:
            for k, v in pairs:
                self.line(k, "-" if v is None else v)
            return
        from rich.table import Table

        table = Table(
            show_header=False,
            title=None if title is None else cell(title),
            title_justify="left",
        )
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for k, v in pairs:
            table.add_row(self._cell(k), self._cell(v))
        self._console().print(table)

    def block(self, title: str, lines: str | Sequence[str]) -> None:
        """A titled block of text (a traceback, log lines; a str is split into lines):
        each line escaped; in plain output each line is ``title<TAB>line``. At most
        ``MAX_BLOCK_CHARS`` characters are shown, then a line saying how much is left
        (``--json`` prints it all)."""
        shown, left = _bounded_lines(lines)
        if not shown:
            return
        if left:
            shown.append(f"... {left} not shown (--json prints it all)")
        if not self.rich:
            for ln in shown:
                click.echo(f"{cell(title)}\t{ln}")
            return
        from rich.panel import Panel
        from rich.text import Text

        self._console().print(Panel(Text("\n".join(shown)), title=cell(title), title_align="left"))

    @contextlib.contextmanager
    def progress(self, total: int, label: str) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr for an operation over ``total`` items; yields
        ``advance(n)``. Shown with rich on a terminal (or ``--rich``), else nothing."""
        show = (
            not self.as_json
            and have_rich()
            and (self.forced or (self.rich and sys.stderr.isatty()))
        )
        if not show or total <= 0:
            yield lambda n: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console(err=True),
        ) as bar:
            task = bar.add_task(text_field(label), total=total)
            yield lambda n: bar.advance(task, n)

    def refresh(self, render: Callable[[], None], first: bool) -> None:
        """One refresh of ``--watch``: with rich on a terminal the screen is cleared
        first, so the table stays in place; otherwise refreshes follow each other (a
        blank line between plain ones)."""
        if self.rich:
            self._console().clear()
        elif not first and not self.as_json:
            click.echo("")
        render()

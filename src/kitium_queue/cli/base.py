"""What every subcommand shares: loading APP, running on its queue, failing in one line.

``load_queue`` imports ``module:attribute`` and returns the ``JobQueue`` or the façade
over several queues (``PartitionedQueue``) it names; ``with_queue`` runs an action on it
and closes it; ``Main.invoke`` is the one place where an error becomes one line on
stderr (``errortext.py``) and an exit code from ``EXIT_CODES``, and runs the command as
the principal of ``--as`` (``principal.py``, which reads ``KITIUM_QUEUE_PRINCIPAL``).
``KITIUM_QUEUE_REDIS``, read here, overrides the queue's Redis URL.

``with_queue(..., worker=True)`` (``kitium-queue worker``) ends its event loop within
bounds (``run_worker_loop``): ``asyncio.run`` cancels the tasks left at its end and
waits for them for ever, so a job whose processor ignored its cancellation (the stop
gave up on it, ``runends.ignoring_cancellation``) kept the process alive until a
SIGKILL, and ran on past its lease beside its retry elsewhere. The process now ends
at once then (the logs flushed, the ``atexit`` handlers run for a few seconds at most),
with ``EXIT_STUCK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, ParamSpec, TypeVar

import click
from redis.exceptions import NoPermissionError

from ..connerrors import ReplyCutOffError, permission_denied
from ..errors import ConfigurationError, ConnectionUnavailableError, KitiumQueueError
from ..facade import MultiQueue
from ..limits import clip, get_logger, printable, safe_text
from ..queue import JobQueue
from ..redact import redact_url
from ..runends import EXIT_HANDLERS_S, ignoring_cancellation, run_exit_handlers
from . import importuse
from .errortext import MAX_ERROR_LINE, error_line, error_text
from .principal import acting, principal_option, shell_terms

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_NOT_READY",
    "EXIT_STUCK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "MAX_ERROR_LINE",
    "MAX_FIELD_CHARS",
    "REDIS_HELP",
    "FiniteFloatRange",
    "Main",
    "app_help",
    "cell",
    "error_line",
    "explain_app",
    "json_option",
    "load_app",
    "load_queue",
    "members",
    "redis_option",
    "row",
    "run_worker_loop",
    "single_queue",
    "text_field",
    "with_queue",
    "with_single_queue",
]

#: The command failed: a job or schedule not found, an operation refused, an error.
EXIT_ERROR = 1
#: The command line or the queue's configuration is wrong (bad argument, unknown APP,
#: invalid option or connection setting).
EXIT_USAGE = 2
#: Redis cannot be reached, refused the credentials, or did not answer in time.
EXIT_UNREACHABLE = 3
#: ``health --probe readiness``: Redis answers, but the queue should not take traffic
#: (memory nearly full, an eviction policy, a read-only replica, a threshold crossed).
EXIT_NOT_READY = 4
#: ``worker``: the worker stopped, but a job did not end when its stop cancelled it (a
#: processor that ignores ``CancelledError``, or a thread it started): the process ended
#: instead of waiting for it for ever, which ended the job with it.
EXIT_STUCK = 5
#: Every exit code but 0, with its meaning (also in ``kitium-queue --help`` and the
#: README's "Command line" section).
EXIT_CODES = {
    EXIT_ERROR: "error (not found, refused, failed)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_UNREACHABLE: "cannot connect to Redis (unreachable, refused credentials, no answer)",
    EXIT_NOT_READY: "not ready (health --probe readiness: Redis answers, a check failed)",
    EXIT_STUCK: "worker stopped, but a job did not end when cancelled (the process ended it)",
}

T = TypeVar("T")
P = ParamSpec("P")

#: One field of a line of text output (see ``limits.printable``).
text_field = printable

#: Help of ``--redis``, where it overrides the URL of APP's queue.
REDIS_HELP = "Redis URL overriding the queue's (default: $KITIUM_QUEUE_REDIS when set)."
redis_option = click.option("--redis", default=None, help=REDIS_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN (which compares false with both
    bounds, so a plain range lets it through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if rv != rv:
            self.fail(f"{value!r} is not a number", param, ctx)
        return rv


#: Longest field of text output, escaped (a plain row's column, a rich cell): the ids,
#: names, error texts (cut at 4,096 characters when written) and tracebacks (16,384) the
#: library writes fit, and one record written by hand cannot print megabytes into a
#: listing. ``--json`` prints values whole.
MAX_FIELD_CHARS = 16_384


def cell(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` as one field of text output: escaped (``text_field``) and cut to
    ``limit`` characters, saying how long it was. A long text is cut before it is
    escaped too, so a value of megabytes costs no more than ``limit``; a cut falls
    between whole escapes (never ``\\x1`` or a lone backslash before the marker)."""
    raw = value if isinstance(value, str) else safe_text(value)
    if type(raw) is not str:  # a str subclass: its plain text (as text_field reads it)
        raw = str.__str__(raw)
    if len(raw) > limit:
        return f"{_escaped_head(raw, limit)}... [cut, {len(raw):,} characters in all]"
    text = text_field(raw)
    if len(text) <= limit:
        return text
    return f"{_escaped_head(raw, limit)}... [cut, {len(text):,} characters in all, escaped]"


def _escaped_head(raw: str, limit: int) -> str:
    """The escaped start of ``raw``, as much as fits in ``limit`` characters, made of
    whole escapes."""
    head = text_field(raw[:limit])
    if len(head) <= limit:
        return head
    out: list[str] = []
    used = 0
    for ch in raw[:limit]:
        esc = text_field(ch)
        used += len(esc)
        if used > limit:
            break
        out.append(esc)
    return "".join(out)


def row(*fields: object) -> str:
    """One line of text output: the escaped fields (each at most ``MAX_FIELD_CHARS``),
    separated by tabs."""
    return "\t".join(cell(f) for f in fields)


def members(queue: Any) -> list[JobQueue]:
    """The physical queues of ``queue``: its members for a façade, else itself."""
    return list(queue.queues) if isinstance(queue, MultiQueue) else [queue]


def load_app(app: str, kinds: tuple[type, ...] = (JobQueue, MultiQueue)) -> Any:
    """Import ``module:attribute`` and return the object it names: one of ``kinds`` (a
    factory is called first). Feature commands whose APP is something else (a
    ``GlobalQueueManager`` built with its configuration) load it here."""
    return _resolve(app, kinds)


def _raised(exc: BaseException) -> str:
    """What an APP module or factory raised, for one line: its type and its text,
    credentials redacted, escaped and clipped (a ``sys.exit()`` says so)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({clip(text_field(repr(exc.code)), 100)})"
    return clip(text_field(f"{type(exc).__name__}: {redact_url(exc)}"), 500)


def _file_path(module_name: str, attr: str) -> str:
    """The refusal of a file path given as APP's module, with the module form to use."""
    parts = [p for p in module_name.replace("\\", "/").removesuffix(".py").split("/") if p]
    parts = [p for p in parts if p != "."]
    relative = not os.path.isabs(module_name) and ".." not in parts
    module = ".".join(parts) if relative else (parts or ["tasks"])[-1]
    return f"{module_name!r} is a file path: APP is module:attribute, e.g. {module}:{attr}" + (
        "" if relative else ", run from the directory that holds it"
    )


def _not_found(module_name: str, missing: str, attr: str) -> str:
    """What to do when APP's module (or its package) is not found: ``missing``."""
    parent, _, leaf = missing.rpartition(".")
    found = sys.modules.get(parent) if parent else None
    if found is not None:  # the package was found (perhaps another of that name)
        where = getattr(found, "__file__", None) or list(getattr(found, "__path__", []))
        at = clip(text_field(str(where)), 200)
        return f"; the package {parent!r} found (at {at}) has no module {leaf!r}"
    if module_name.endswith(".py"):
        return "; " + _file_path(module_name, attr)
    return "; run from the directory that holds the module, or set PYTHONPATH"


def _resolve(app: str, kinds: tuple[type, ...] = (JobQueue, MultiQueue)) -> Any:
    module_name, _, attr = app.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{app!r}: use module:attribute, e.g. myapp.tasks:queue")
    if (
        "/" in module_name
        or "\\" in module_name
        or (module_name.endswith(".py") and os.path.isfile(module_name))
    ):
        raise click.BadParameter(_file_path(module_name, attr))  # never run as a script
    sys.path.insert(0, os.getcwd())
    try:
        # What the module prints while it loads goes to stderr: stdout holds only data.
        with contextlib.redirect_stdout(sys.stderr):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        # The module itself (or its package) not found, not a dependency inside it.
        hint = (
            _not_found(module_name, missing, attr)
            if missing and (module_name == missing or module_name.startswith(f"{missing}."))
            else ""
        )
        raise click.BadParameter(f"cannot import {module_name!r}: {_raised(exc)}{hint}") from None
    except (KitiumQueueError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:
        hint = importuse.import_hint(exc)  # asyncio.run in a running loop
        raise click.BadParameter(
            f"importing {module_name!r} failed: {_raised(exc)}; fix the module, or name "
            f"another APP (its import must only build the queue{hint})"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        # ``orders.queues.2``: one partition of a partitioned queue.
        if (
            isinstance(obj, (list, tuple))
            and part.isascii()
            and part.isdigit()
            and int(part) < len(obj)
        ):
            obj = obj[int(part)]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise click.BadParameter(f"{module_name!r} has no attribute {attr!r}")
    if callable(obj) and not isinstance(obj, kinds):
        try:
            with contextlib.redirect_stdout(sys.stderr):
                obj = obj()
        except TypeError as exc:
            # Not a factory of no arguments (a function that needs some, a class, a
            # builtin): APP names the wrong thing.
            raise click.BadParameter(
                f"{app!r} is a {type(obj).__name__} that cannot be called without "
                f"arguments ({text_field(exc)}): APP must name a queue, or a function "
                "of no arguments that returns one"
            ) from None
        except (KitiumQueueError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:
            raise click.BadParameter(
                f"calling {app!r} to build the queue failed: {_raised(exc)}"
            ) from None
    if not isinstance(obj, kinds):
        wanted = (
            "a JobQueue or PartitionedQueue"
            if kinds == (JobQueue, MultiQueue)
            else "a " + " or ".join(k.__name__ for k in kinds)
        )
        raise click.BadParameter(f"{app!r} is a {type(obj).__name__}, not {wanted}")
    importuse.record(module_name, lambda: members(obj))  # bound to that loop: _failure
    return obj


def load_queue(app: str, redis: str | None = None) -> Any:
    """Import ``module:attribute`` and return the ``JobQueue`` (or ``PartitionedQueue``)
    it names, with payloads shown redacted and ``redis`` (or ``KITIUM_QUEUE_REDIS``)
    as its Redis URL when given."""
    obj = _resolve(app)
    importuse.check_app(app, obj)  # what a feature's CLI refuses (add_app_check)
    parts = members(obj)
    for q in parts:
        # What the CLI prints is seen by people: protected payloads are shown redacted
        # (and a job's subject id wherever its payload is: the compliance feature's view).
        q.ctx.redact_payloads = True
    url = redis or os.environ.get("KITIUM_QUEUE_REDIS")
    if url:
        from ..connection import ConnectionFactory

        try:
            for q in parts:
                q.connection = ConnectionFactory(url)
        except ConfigurationError as exc:  # its message is redacted: no credentials
            hint = "--redis" if redis else "KITIUM_QUEUE_REDIS (environment)"
            raise click.BadParameter(error_text(str(exc)), param_hint=hint) from None
    if parts[0].connection.is_memory:
        # Otherwise an empty queue looks like a bug (or a hang, for events).
        click.echo(
            f"note: queue '{text_field(obj.name)}' uses "
            f"{text_field(parts[0].connection.describe())}, whose data lives only in the "
            "process that created it: this command sees an empty queue. Point it at Redis "
            "with --redis URL or KITIUM_QUEUE_REDIS.",
            err=True,
        )
    return obj


def single_queue(queue: Any, command: str = "this command") -> JobQueue:
    """``queue`` itself when it is one ``JobQueue``; for a façade a clear error saying
    how to name one of its queues."""
    if isinstance(queue, MultiQueue):
        raise ConfigurationError(
            f"{command} works on one queue, and '{text_field(queue.name)}' is a "
            f"{type(queue).__name__} of {len(queue.queues)}: name one of them as APP, "
            "e.g. module:attribute.queues.0"
        )
    one: JobQueue = queue
    return one


def _close_on_error(queue: Any, exc: Exception) -> Exception | None:
    """The library's error for a raw Redis error that reached this far (None: keep)."""
    return members(queue)[0].connection.error(exc, queue.name)


def with_queue(
    app: str, redis: str | None, action: Callable[[Any], Awaitable[T]], *, worker: bool = False
) -> T:
    """Run ``action`` on the queue ``app`` names, then close it. An error from Redis that
    reached this far raw is translated by the connection (``ConnectionFactory.error``);
    ``Main.invoke`` prints it. ``worker``: the event loop's end is bounded
    (``run_worker_loop``)."""
    queue = load_queue(app, redis)

    async def go() -> T:
        try:
            return await action(queue)
        except (click.ClickException, KitiumQueueError, BrokenPipeError):
            # BrokenPipeError: our stdout was closed (``| head``), not a Redis socket.
            raise
        except Exception as exc:
            wrapped = _close_on_error(queue, exc)
            if wrapped is None:
                raise
            raise wrapped from exc
        finally:
            await queue.close()

    return run_worker_loop(go()) if worker else asyncio.run(go())


#: How long the end of ``kitium-queue worker`` waits for the tasks still running once
#: the queue is closed to end when cancelled, and for the threads of the loop's default
#: executor (``asyncio.to_thread``) to end (s).
TEARDOWN_S = 2.0


class _Threads(ThreadPoolExecutor):
    """The default executor of the worker's loop (``asyncio.to_thread``), which knows
    the calls its threads still run: a thread cannot be stopped, and the interpreter's
    exit waits for it."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="asyncio")
        self.calls: set[Future[Any]] = set()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        fut = super().submit(fn, *args, **kwargs)
        self.calls.add(fut)
        fut.add_done_callback(self.calls.discard)
        return fut


def run_worker_loop(main: Coroutine[Any, Any, T], bound_s: float = TEARDOWN_S) -> T:
    """``asyncio.run(main)`` whose end is bounded: the tasks left are cancelled and get
    ``bound_s`` to end (those left after its first half are cancelled again), but those
    of jobs the worker's stop gave up on (``runends.ignoring_cancellation``) are not
    waited for at all; the async generators get ``bound_s``, the loop is closed, and the
    calls of its default executor's threads get ``bound_s``. When a task or a thread did
    not end, an ERROR says so and the process ends at once with ``EXIT_STUCK``, the logs
    and the standard streams flushed, the ``atexit`` handlers run first (for
    ``runends.EXIT_HANDLERS_S`` at most: ``run_exit_handlers``). Its threads cannot be
    stopped, and the interpreter's exit waits for them: the stuck job ends with the
    process, so it cannot run on beside its retry."""
    if sys.version_info >= (3, 11):  # its SIGINT handler cancels main: the queue closes
        runner = asyncio.Runner()
        loop, run = runner.get_loop(), runner.run
    else:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        run = loop.run_until_complete
    threads = _Threads()
    loop.set_default_executor(threads)

    async def tasks_left() -> tuple[int, int]:
        me = asyncio.current_task()
        stuck = set(ignoring_cancellation())
        others = [t for t in asyncio.all_tasks() if t is not me and t not in stuck]
        for t in others:
            t.cancel()
        # Cancelled once, as asyncio.run does: a cleanup a task runs on its cancellation
        # gets the first half of the bound; then those left are cancelled again (a
        # cancellation swallowed as a reply arrived).
        pending, deadline = set(others), loop.time() + bound_s
        again = deadline - bound_s / 2
        while pending and loop.time() < deadline:
            _, pending = await asyncio.wait(pending, timeout=min(0.25, deadline - loop.time()))
            for t in pending if loop.time() >= again else ():
                t.cancel()
        for t in others:
            if t.done() and not t.cancelled() and t.exception() is not None:
                loop.call_exception_handler(
                    {"message": "unhandled exception at the worker's end", "task": t,
                     "exception": t.exception()}
                )  # fmt: skip
        return len(stuck), len(pending)

    jobs = tasks = 0
    try:
        return run(main)
    finally:
        try:
            jobs, tasks = loop.run_until_complete(tasks_left())
            with contextlib.suppress(asyncio.TimeoutError):
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), bound_s))
        finally:
            asyncio.set_event_loop(None)
            loop.close()  # shuts the executor down without waiting
        _, calls = futures_wait(list(threads.calls), timeout=bound_s)
        if jobs or tasks or calls:
            _exit_stuck(jobs, tasks, len(calls))


def _exit_stuck(jobs: int, tasks: int, calls: int) -> None:
    """Say what did not end (``run_worker_loop``), flush, run the ``atexit`` handlers
    (bounded: ``run_exit_handlers``), and end the process."""
    what = []
    if jobs:
        what.append(f"{jobs} job(s) whose processor ignored its cancellation")
    if tasks:
        what.append(f"{tasks} other task(s) that did not end when cancelled")
    if calls:
        what.append(f"{calls} call(s) in threads of asyncio.to_thread")
    get_logger("kitium_queue.worker").error(
        "the worker stopped, but %s still ran; ending the process (exit code %d), which "
        "ends them: a job left leased is recovered once its lease expires",
        " and ".join(what),
        EXIT_STUCK,
    )
    exc = sys.exc_info()[1]
    if isinstance(exc, Exception):  # the command failed too: say so, as Main.invoke does
        with contextlib.suppress(Exception):
            click.echo(f"Error: {error_line(_failure(exc)[1])}", err=True)
    logging.shutdown()
    if not run_exit_handlers():  # os._exit skips them: an exporter's last spans
        with contextlib.suppress(Exception):
            sys.stderr.write(f"the atexit handlers did not end within {EXIT_HANDLERS_S:g} s\n")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_STUCK)


def with_single_queue(app: str, redis: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """``with_queue`` for commands of one physical queue (the features' commands)."""

    async def one(queue: Any) -> T:
        return await action(single_queue(queue, "this command"))

    return with_queue(app, redis, one)


def app_help(names: str = "a JobQueue") -> str:
    """What APP is, for the help of a command that takes it: ``names``, what it names."""
    return (
        f"APP is module:attribute naming {names} (e.g. myapp.tasks:queue), importable "
        "from the current directory (or PYTHONPATH). Importing the module must only "
        "build the queue: code that starts a worker or calls asyncio.run goes under "
        '`if __name__ == "__main__":`.'
    )


def explain_app(group: click.Group, names: Mapping[str, str]) -> None:
    """Add ``app_help`` to the help of every command under ``group`` that takes an APP
    argument (click arguments have no help of their own); ``names``: what APP names
    under a subcommand of ``group`` when not a JobQueue."""
    for name, command in group.commands.items():
        _explain_app(command, app_help(names.get(name, "a JobQueue")))


def _explain_app(command: click.Command, line: str) -> None:
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _explain_app(sub, line)
    takes_app = any(isinstance(p, click.Argument) and p.name == "app" for p in command.params)
    if takes_app and line not in (command.help or ""):
        # Cleaned first, as click cleans a docstring: the line has no indentation.
        text = inspect.cleandoc(command.help or "")
        command.help = f"{text}\n\n{line}" if text else line


def _failure(exc: BaseException, command: str | None = None) -> tuple[int, str]:
    """The exit code and the one line of text for an error that ended ``command``: its
    non-printable characters escaped, an escaped value in it left as it is
    (``error_text``), a refusal for want of a principal told in CLI terms."""
    if isinstance(exc, ReplyCutOffError):  # the server answers: no "cannot connect"
        code = EXIT_ERROR
    elif isinstance(exc, ConnectionUnavailableError):
        code = EXIT_UNREACHABLE
    elif isinstance(exc, ConfigurationError):
        code = EXIT_USAGE
    else:
        code = EXIT_ERROR
    if isinstance(exc, NoPermissionError):  # a plain read the Redis ACL refused
        exc = permission_denied(redact_url(exc))
    # The text may quote job or server data: escaped. The library's messages are
    # redacted already; anything else goes through the redaction too.
    if isinstance(exc, KitiumQueueError):
        return code, error_text(shell_terms(exc, safe_text(exc), command))
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in str(exc.reason):
        # Text from the command line that was not UTF-8 (the shell passes such bytes
        # as lone surrogates) reached Redis, which takes bytes: an argument is wrong.
        bad = ascii(exc.object[exc.start : exc.end])
        return EXIT_USAGE, (
            f"an argument holds text that is not valid UTF-8 ({bad}), which cannot name "
            "anything stored in Redis: check the argument's encoding"
        )
    text = f"{type(exc).__name__}: {redact_url(exc)}"
    used = importuse.failure(exc, text)
    if used is not None:
        return EXIT_USAGE, error_text(used)
    return code, f"unexpected error: {error_text(text)} (--debug shows the traceback)"


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test runner's buffer)
        pass


class Main(click.Group):
    """The command group; the one place where a subcommand's error becomes one line on
    stderr and an exit code (``EXIT_CODES``), with the traceback only with ``--debug``
    or ``-v``. Its ``--as`` names who the command acts for (``principal.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(principal_option())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with acting(ctx):
                return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            exc.message = error_line(error_text(exc.message))  # type: ignore[misc]  # Final
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader of stdout went away (``| head``): nothing more can be said there
            # and nothing went wrong with the queue. End quietly, as a pipe's writer does,
            # with stdout pointed at /dev/null so the interpreter's last flush cannot
            # raise again.
            _stdout_to_devnull()
            ctx.exit(EXIT_ERROR)
        except Exception as exc:
            code, line = _failure(exc, ctx.invoked_subcommand)
            line = error_line(line)
            if ctx.params.get("debug") or ctx.params.get("verbose"):
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(f"Error: {line}", err=True)
            ctx.exit(code)

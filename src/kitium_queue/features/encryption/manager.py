"""``EncryptionManager``: encrypted jobs on one queue (see ``docs/encryption.md``).

It plugs into the queue through the extension points only:

* the job option ``encrypted`` (option registry), or every job with ``encrypt_all``;
* enqueue middleware: serializes the data, encrypts it under the queue's current key,
  bound to the job's id, name and queue (a job added without ``job_id`` gets a
  client-made id, ``str(uuid4())``, because auto ids are assigned inside Redis after the
  ciphertext must exist); a schedule's template is bound to the schedule instead;
* process middleware (``running.py``): opens the data before the processor runs and
  seals the result before it is stored; a job whose ciphertext does not open (tampered,
  moved) fails for good, dead-lettered, with the reason, and the worker carries on; a
  job that needs a key this process does not hold is deferred (no attempt spent) for
  ``missing_key_wait_ms``, for a process that holds it, then dead-lettered; under
  ``encrypt_all`` a never-encrypted job is refused unless ``accept_plaintext_before``;
* a failure-text filter (``failures.py``, unless ``seal_failures=False``): a failed
  run's reason and traceback are sealed too;
* a job-text filter (``progresslogs.py``, unless ``seal_progress_and_logs=False``): the
  progress values and log lines a processor writes are sealed too;
* a ``JobInfo`` view: queries in this process show the plaintext (the CLI, which sets
  ``redact_payloads``, shows ``<encrypted ...>`` for data and results) and the opened
  failure texts and progress; a log view opens the log lines ``get_job_logs`` returns;
* a leader-only service running the rotation pass (``rotation.py``), campaigned for only
  while this process holds the current key (``leading.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...errors import (
    ConfigurationError,
    SerializationError,
)
from ...limits import get_logger
from ...middleware import enqueue_origin
from ...options import to_ms
from .copies import CopyTarget
from .crypto import (
    ALGORITHMS,
    Binding,
    DecryptionError,
    KeyConfig,
    KeyNotHeldError,
    KeyRecordDamagedError,
    KeyRing,
    check_key_id,
    envelope_key_id,
    is_envelope,
    is_key_id,
)
from .failures import check_seal
from .leading import RotationService
from .progresslogs import install_texts, view_texts
from .rotation import RotationPass, RotationStatus, read_status
from .running import RunGuard, plaintext_cutoff
from .status import verify_keys

if TYPE_CHECKING:
    from ...job import JobInfo
    from ...queue import JobQueue

__all__ = ["FEATURE", "EncryptionManager", "data_binding"]

log = get_logger(__name__)

#: The name the option, scripts and service are registered under.
FEATURE = "encryption"
_SCRIPTS = ("enc_rotate", "enc_swap")
#: The fields of an envelope as ``KeyRing.seal`` writes it.
_ENVELOPE_FIELDS = frozenset({"kqe", "kid", "alg", "for", "ct"})
_INSTALLED: weakref.WeakKeyDictionary[Any, EncryptionManager] = weakref.WeakKeyDictionary()


def _wrongtype(exc: Exception) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def damaged_record(queue: str, key: str, what: str) -> KeyRecordDamagedError:
    """The error for a damaged key record ``key`` of ``queue``, saying how to repair it."""
    if key.endswith(":enc:keys"):
        fix = (
            f"DEL {key}: every process records its key ids again at initialize() (the "
            "record holds ids only, never keys)"
        )
    elif "rotations" in what:
        fix = (
            f"HSET {key} rotations <the number of the latest rotation: field n of "
            f"{key}:rotation, or 0>, then rotate again; nothing was changed"
        )
    else:
        fix = (
            f"HSET {key} current <the id of a key your processes hold>, or DEL {key} (the "
            "next initialize() or encrypted job sets it from current_key_id); data under "
            "any key your processes hold stays readable. Until then nothing is encrypted "
            "and workers defer encrypted jobs, no attempt spent"
        )
    return KeyRecordDamagedError(
        f"queue {queue!r}: the encryption key record {key} is damaged ({what}); repair it: {fix}",
        key,
    )


def _checked(queue: str, reply: Any) -> Any:
    """An ``enc_rotate`` reply, or the ``KeyRecordDamagedError`` it reports."""
    if reply[0] == b"damaged":
        key, what = (v.decode("utf-8", "replace") for v in reply[1:3])
        raise damaged_record(queue, key, what)
    return reply


async def _read_current(queue: JobQueue, key: str) -> bytes | None:
    """The current key id stored in ``key`` (``KeyRecordDamagedError`` when it holds
    another type)."""
    client = await queue.client()
    try:
        raw: bytes | None = await client.hget(key, "current")
    except ResponseError as exc:
        if not _wrongtype(exc):
            raise
        raise damaged_record(queue.name, key, "it holds another type") from None
    return raw


def _encrypted_option(value: Any, section: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{section}: encrypted must be True or False, got {value!r:.40}")
    return value


def _sealed_template(data: Any) -> bool:
    """Whether ``data`` is a schedule's sealed data (an update without new data)."""
    return is_envelope(data) and data.get("for") == "schedule"


def data_binding(queue: str, job_id: str, name: str, scope: str) -> Binding:
    """The binding of a job's data: to the job, or (``scope='schedule'``) to the schedule
    whose tick made it, read from the job's id ``sched:<schedule id>:<tick ms>``."""
    if scope == "schedule":
        sid, _, tick = job_id[6:].rpartition(":")
        if not job_id.startswith("sched:") or not sid or not tick.isdigit():
            raise DecryptionError(
                "ciphertext is bound to a schedule but the job was not made by a schedule: "
                "it was moved"
            )
        return Binding("schedule", queue, sid, name, "data")
    return Binding(scope, queue, job_id, name, "data")


def _shown(status: RotationStatus) -> dict[str, Any]:
    """What the ``admin`` hook sees of a rotation command's result (ids and counts)."""
    return {"rotation": status.rotation, "state": status.state, "to_key_id": status.to_key_id}


class EncryptionManager:
    """Payload encryption for one queue: ``encrypted=True`` jobs (or every job, with
    ``encrypt_all``) have their data and result stored encrypted.

    Args:
        queue: the queue; every process that adds or runs its jobs builds a manager with
            the same keys (a worker without one would hand processors the envelope).
        keys: ``KeyConfig`` s (or dicts ``key_id``, ``key`` base64, ``algorithm``) this
            process holds; more with ``add_key``.
        current_key_id: the key new jobs use when the queue has none yet (the first
            ``initialize`` anywhere); default: the first key given. After that, Redis
            says which key is current (``rotate_key`` changes it).
        encrypt_all: encrypt every job of the queue (``encrypted=False`` is refused,
            and the worker refuses plaintext jobs).
        accept_plaintext_before: with ``encrypt_all``, this process's workers still run
            a never-encrypted job (plaintext data, not marked encrypted) added before
            this time (a timezone-aware ``datetime``, or ms since the epoch; Redis'
            clock): the plaintext backlog of a switch to ``encrypt_all``. Default None:
            every plaintext job is refused. Remove it once that backlog has drained.
        refresh_ms: how long this process trusts its copy of the current key id.
        rotation_grace_ms: how long the rotation pass waits after ``rotate_key`` before
            it sweeps, so that every process has seen the new key (default
            ``refresh_ms + 5000``).
        rotation_batch: records read and rewritten per step of the pass (1..1000).
        run_rotation: run the pass as a leader-only service alongside this process's
            workers (one process of the queue at a time).
        missing_key_wait_ms: how long this process's workers defer a job that needs a
            key it does not hold (the job's own key, or the queue's current key to seal
            the result), for a process that holds it: during a rolling deploy of a new
            key, old workers hand such jobs on instead of dead-lettering them. No
            attempt is spent; each deferral is longer (1 s, growing to 30 s). After
            this long the job is dead-lettered with the reason. Default 10 minutes;
            0 dead-letters at once.
        seal_failures, seal_progress_and_logs: seal an encrypted job's failure reason and
            traceback, and its progress and log lines (default True); False: in clear.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        keys: Iterable[KeyConfig | Mapping[str, Any]] = (),
        current_key_id: str | None = None,
        encrypt_all: bool = False,
        refresh_ms: Any = 1000,
        rotation_grace_ms: Any = None,
        rotation_batch: int = 200,
        run_rotation: bool = True,
        missing_key_wait_ms: Any = 600_000,
        accept_plaintext_before: datetime | int | None = None,
        seal_failures: bool = True,
        seal_progress_and_logs: bool = True,
    ) -> None:
        if queue in _INSTALLED:
            raise ConfigurationError(
                f"queue {queue.name!r} already has an EncryptionManager; use "
                "EncryptionManager.for_queue(queue)"
            )
        self.queue = queue
        self.ring = KeyRing()
        if not isinstance(encrypt_all, bool) or not isinstance(run_rotation, bool):
            raise ConfigurationError(
                "encrypt_all and run_rotation must be True or False, got "
                f"{encrypt_all!r:.40} and {run_rotation!r:.40}"
            )
        self.encrypt_all, self.seal_failures = encrypt_all, check_seal(seal_failures)
        self.seal_progress_and_logs = check_seal(seal_progress_and_logs, "progress_and_logs")
        self.refresh_ms = to_ms(refresh_ms, "refresh_ms", minimum=1)
        grace = self.refresh_ms + 5000 if rotation_grace_ms is None else rotation_grace_ms
        self.rotation_grace_ms = to_ms(grace, "rotation_grace_ms")
        self.missing_key_wait_ms = to_ms(missing_key_wait_ms, "missing_key_wait_ms")
        #: ``accept_plaintext_before`` in ms since the epoch (None: not accepted).
        self.accept_plaintext_before = plaintext_cutoff(accept_plaintext_before, encrypt_all)
        self.guard = RunGuard(self)
        self._first: str | None = None
        for k in keys:
            self._hold(k)
        self._wanted = None if current_key_id is None else check_key_id(current_key_id)
        self._current: str | None = None
        self._fetched = -1e18
        #: Whether the held keys were compared with the queue's record (``verify_keys``).
        self.keys_verified = False
        self._refresh_lock: asyncio.Lock | None = None
        self.rotation = RotationPass(self, batch=rotation_batch)
        # Copies of job values other features keep (declared on the queue: copies.py).
        self.rotation.add_target(CopyTarget(self))
        #: The leader-only service running the pass (None without ``run_rotation``).
        self.service: RotationService | None = None
        self.meta_key = queue.keys.extra("enc")
        self._install(run_rotation)
        _INSTALLED[queue] = self

    @classmethod
    def for_queue(cls, queue: JobQueue) -> EncryptionManager:
        """The manager installed on ``queue`` in this process, or a new one without keys
        (it reads status and metadata; it encrypts nothing)."""
        got = _INSTALLED.get(queue)
        return got if got is not None else cls(queue, run_rotation=False)

    def _install(self, run_rotation: bool) -> None:
        q = self.queue
        q.declare_option(
            "encrypted",
            feature=FEATURE,
            normalize=_encrypted_option,
            default=False,
            doc="store the job's data and result encrypted (EncryptionManager)",
        )
        for name in _SCRIPTS:
            src = resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")
            q.scripts.add_fragment(name, src)
        q.use_enqueue(self._on_enqueue)
        q.use_process(self.guard.on_process)
        install_texts(self)  # failure texts, progress and log lines (progresslogs.py)
        q.ctx.info_views.append(self._view)
        if run_rotation:
            self.service = RotationService(self)
            q.add_service(self.service)

    # ------------------------------------------------------------------ keys
    def _hold(self, config: KeyConfig | Mapping[str, Any]) -> str:
        key_id = self.ring.add(config)
        if self._first is None:
            self._first = key_id
        return key_id

    async def add_key(self, config: KeyConfig | Mapping[str, Any]) -> str:
        """Hold one more key (``key_id``, ``key`` base64 of 32 bytes, ``algorithm``:
        ``aes-256-gcm`` default, or ``aes-256-cbc``) in this process; its id (never its
        material) is recorded in Redis. Returns the key id."""
        key_id = self._hold(config)
        client = await self.queue.client()
        key = self.queue.keys.extra("enc:keys")
        try:
            await client.hsetnx(key, key_id, int(time.time() * 1000))
        except ResponseError as exc:
            if not _wrongtype(exc):
                raise
            raise damaged_record(self.queue.name, key, "it holds another type") from None
        await verify_keys(self)
        return key_id

    def held_key_ids(self) -> list[str]:
        """The ids of the keys this process holds."""
        return self.ring.ids()

    async def initialize(self) -> str:
        """Record this process's key ids and, when the queue has no current key yet, make
        ``current_key_id`` (or the first key) current. Returns the current key id.

        Raises ``ConfigurationError`` when this process holds no key, or not the key the
        queue uses now (add it with ``add_key``)."""
        await self._init_redis()
        return await self.current_key_id(refresh=True)

    async def _init_redis(self) -> None:
        first = self._wanted or self._first
        if first is None:
            raise ConfigurationError(
                f"queue {self.queue.name!r}: EncryptionManager holds no key; pass keys=[...] "
                "or call add_key() before initialize()"
            )
        if first not in self.ring:
            raise ConfigurationError(f"current_key_id {first!r} is not among the keys given")
        client = await self.queue.client()
        now = int(time.time() * 1000)
        key = self.queue.keys.extra("enc:keys")
        pipe = client.pipeline(transaction=False)
        for key_id in self.ring.ids():
            pipe.hsetnx(key, key_id, now)
        for got in await pipe.execute(raise_on_error=False):
            if isinstance(got, Exception):
                if not _wrongtype(got):
                    raise got
                raise damaged_record(self.queue.name, key, "it holds another type")
        await verify_keys(self, refuse=True)
        _checked(self.queue.name, await self.queue.run("enc_rotate", ["init", "", first]))

    async def current_key_id(self, *, refresh: bool = False) -> str:
        """The queue's current key id (cached for ``refresh_ms``); ``EncryptionError``
        when this process does not hold it."""
        if refresh or time.monotonic() - self._fetched > self.refresh_ms / 1000:
            if self._refresh_lock is None:
                self._refresh_lock = asyncio.Lock()
            async with self._refresh_lock:
                if refresh or time.monotonic() - self._fetched > self.refresh_ms / 1000:
                    raw = await _read_current(self.queue, self.meta_key)
                    if raw is None:
                        await self._init_redis()
                        raw = await _read_current(self.queue, self.meta_key)
                    got = "" if raw is None else raw.decode("utf-8", "replace")
                    if not is_key_id(got):
                        raise damaged_record(
                            self.queue.name, self.meta_key, "its current key id is not one"
                        )
                    if not self.keys_verified or self.ring.mismatched:
                        await verify_keys(self)
                    self._current = got
                    self._fetched = time.monotonic()
        cur = self._current
        assert cur is not None
        if cur in self.ring.mismatched:
            raise self.ring.mismatch_error(cur)
        if cur not in self.ring:
            raise KeyNotHeldError(
                f"queue {self.queue.name!r} encrypts with key {cur!r}, which this process "
                "does not hold; add it with add_key() (keys come from your configuration, "
                "never from Redis)",
                cur,
            )
        return cur

    async def rotate_key(self, old_key_id: str, new_key_id: str) -> RotationStatus:
        """Make ``new_key_id`` the current key in place of ``old_key_id``.

        New jobs and results use the new key (every process within ``refresh_ms``);
        the old key stays usable for decryption; the leader-only rotation pass then
        re-encrypts what is stored under any other key (waiting, delayed, parked,
        failed, dead-lettered and completed jobs, results, schedules). Both keys must be
        held here. Raises ``ConfigurationError`` if ``old_key_id`` is not the current
        key (someone rotated first) or a key is missing.
        """
        old, new = check_key_id(old_key_id), check_key_id(new_key_id)
        for k in (old, new):
            if k not in self.ring:
                raise ConfigurationError(
                    f"rotate_key: key {k!r} is not held by this process; add it first"
                )

        async def action() -> RotationStatus:
            await self.current_key_id()  # the queue has a current key
            reply = _checked(
                self.queue.name, await self.queue.run("enc_rotate", ["rotate", old, new])
            )
            state, cur = reply[0], reply[1]
            if state == b"stale":
                raise ConfigurationError(
                    f"rotate_key: the current key is {cur.decode(errors='replace')!r:.80}, not "
                    f"{old!r}; nothing was changed"
                )
            if state == b"same":
                raise ConfigurationError(f"rotate_key: {new!r} is the current key already")
            self._current, self._fetched = new, time.monotonic()
            log.info("queue %s: encryption key rotated from %s to %s", self.queue.name, old, new)
            return await read_status(self.queue)

        return await self.queue.admin.execute(
            "rotate_key", {"old_key_id": old, "new_key_id": new}, action, shown=_shown
        )

    async def rotation_status(self) -> RotationStatus:
        """The latest rotation and its pass's progress (``RotationStatus``). A read of
        the queue: it passes the queue's read guards first."""
        await self.queue.queries.check("rotation_status", {})
        return await read_status(self.queue)

    async def run_rotation(self) -> RotationStatus:
        """Run the pass of the latest rotation here, to its end (for tools, or when no
        worker of the queue runs). Safe alongside the leader's pass (compare-and-set).
        An administrative command (guards, ``admin`` hook)."""
        return await self.queue.admin.execute("run_rotation", {}, self.rotation.run, shown=_shown)

    # ------------------------------------------------------------------ values
    async def encrypt(self, data: Any, context: str = "") -> dict[str, Any]:
        """``data`` (JSON-serializable) as an envelope under the current key, bound to
        this queue and ``context`` (decrypt with the same context)."""
        key_id = await self.current_key_id()
        raw = self.queue.serializer.dumps(data, "value")
        return self.ring.seal(raw, key_id, Binding("value", self.queue.name, context, "", ""))

    async def decrypt(self, data: Any, context: str = "") -> Any:
        """The value of an envelope made by ``encrypt`` with the same ``context``;
        ``DecryptionError`` when it does not open."""
        raw = self.ring.open(data, Binding("value", self.queue.name, context, "", ""))
        return self.queue.serializer.loads(raw, "value")

    def open_job_data(self, job_id: str, name: str, envelope: Any) -> Any:
        """The plaintext data of a job (``DecryptionError`` when it does not open)."""
        if not is_envelope(envelope):
            raise DecryptionError(
                "the job is marked encrypted (option encrypted=true) but its data is not "
                "an envelope: it was replaced by plaintext after it was added (tampering, "
                "or an edit by hand)"
            )
        binding = data_binding(self.queue.name, job_id, name, str(envelope.get("for")))
        return self._loads(self.ring.open(envelope, binding), "data")

    def open_job_result(self, job_id: str, name: str, envelope: Any) -> Any:
        """The plaintext result of a job (``DecryptionError`` when it does not open)."""
        binding = Binding("job", self.queue.name, job_id, name, "result")
        return self._loads(self.ring.open(envelope, binding), "result")

    def _loads(self, raw: bytes, what: str) -> Any:
        try:
            return self.queue.serializer.loads(raw, what)
        except SerializationError:
            raise DecryptionError(f"decrypted {what} is not valid JSON") from None

    # ------------------------------------------------------------------ producer
    def _wants(self, opts: Mapping[str, Any]) -> bool:
        flag = opts.get("encrypted")
        if self.encrypt_all:
            if flag is False:
                raise ConfigurationError(
                    f"queue {self.queue.name!r} encrypts every job (encrypt_all=True); "
                    "drop encrypted=False"
                )
            return True
        return flag is True

    async def _on_enqueue(
        self, job_name: str, data: Any, options: Mapping[str, Any]
    ) -> tuple[str, Any, Mapping[str, Any]]:
        name = job_name
        origin = enqueue_origin.get()
        if not self._wants(options):
            if origin is not None and origin[0] == "schedule" and _sealed_template(data):
                # A sealed schedule updated with encrypted=False (its data read back as
                # the envelope): its plaintext, not the envelope as the new data.
                binding = Binding("schedule", self.queue.name, origin[1], name, "data")
                data = self._loads(self.ring.open(data, binding), "data")
            return name, data, options
        out = {**options, "encrypted": True}
        key_id = await self.current_key_id()
        if origin is not None and origin[0] == "schedule":
            binding = Binding("schedule", self.queue.name, origin[1], name, "data")
            if _sealed_template(data):
                # A schedule updated without new data: its stored (sealed) data again.
                raw = self.ring.open(data, binding)
            else:
                raw = self.queue.serializer.dumps(data)
            kept = await self._stored_template(origin[1], binding, key_id, raw)
            if kept is not None:
                return name, kept, out
        else:
            job_id = out.get("job_id")
            if job_id is None:  # made here: no idempotency window to hold (jobspec)
                job_id = out["job_id"] = str(uuid.uuid4())
                out["job_id_window"] = False
            if not isinstance(job_id, str):
                raise ConfigurationError(f"job_id must be a string, got {type(job_id).__name__}")
            binding = Binding("job", self.queue.name, job_id, name, "data")
            raw = self.queue.serializer.dumps(data)
        return name, self.ring.seal(raw, key_id, binding), out

    async def _stored_template(
        self, schedule_id: str, binding: Binding, key_id: str, raw: bytes
    ) -> dict[str, Any] | None:
        """The schedule's stored envelope when it holds ``raw`` already, sealed under
        ``key_id`` for ``binding``; else None (seal anew).

        A ciphertext is new at every seal (a random nonce): re-declaring an unchanged
        encrypted schedule (every process at start-up) would otherwise store new data,
        bump the schedule's version and emit ``schedule-updated`` each time. Read back
        from Redis, the envelope is kept only when it opens under this binding to the
        same plaintext (authenticated) and has the fields ``seal`` writes, no more."""
        client = await self.queue.client()
        try:
            stored = await client.hget(self.queue.keys.schedule(schedule_id), "d")
        except ResponseError:  # a key of another type: schedule_put reports it
            return None
        if not stored:
            return None
        try:
            env = self.queue.serializer.loads(stored)
            if (
                not _sealed_template(env)
                or set(env) != _ENVELOPE_FIELDS
                or envelope_key_id(env) != key_id
                or not hmac.compare_digest(self.ring.open(env, binding), raw)
            ):
                return None
        except (SerializationError, DecryptionError):
            return None
        return dict(env)

    # ------------------------------------------------------------------ queries
    def _view(self, info: JobInfo, redact: bool) -> None:
        if not (self.encrypt_all or info.options.get("encrypted") is True):
            return
        view_texts(self, info)
        for attr in ("data", "result"):
            value = getattr(info, attr)
            key_id = envelope_key_id(value)
            if key_id is None:
                continue
            if redact:
                # Read back from Redis: a damaged envelope's fields are not echoed.
                shown = key_id if is_key_id(key_id) else "<malformed>"
                alg = value.get("alg")
                setattr(info, attr, f"<encrypted key={shown} {alg if alg in ALGORITHMS else '?'}>")
                continue
            try:
                if attr == "data":
                    plain = self.open_job_data(info.id, info.name, value)
                else:
                    plain = self.open_job_result(info.id, info.name, value)
            except DecryptionError:
                continue  # left as the envelope: it names the key it needs
            setattr(info, attr, plain)

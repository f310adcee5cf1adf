"""The process's cache of composed Lua scripts (``kitium_queue.expanded``).

* Registries with the same fragments and slots share one expansion: the second does not
  expand again and gets the very same ``Script`` objects.
* Anything that changes a composition — a slot fragment added, replaced, reordered or
  removed, a fragment given with ``add_fragment`` — gets its own text, also when the
  registry had composed its scripts before the change (never a stale cached text).
* Against a real Redis: a queue whose ``accept`` slot refuses a job name and a plain
  queue of the same process, made in either order, each run their own scripts.
* The cache is weak (a script no registry holds is freed) and safe to use from several
  threads at once.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import JobRefusedError
from kitium_queue.expanded import ExpandedScripts
from kitium_queue.scripts import SCRIPT_NAMES, ScriptRegistry

REFUSE_BAD = """function(id, name, opts, state)
  if name == 'bad' then return 'bad jobs are refused here' end
end"""
REFUSE_WORSE = REFUSE_BAD.replace("'bad'", "'worse'")


@pytest.fixture
def expansions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the scripts ``ScriptRegistry`` expanded from their files (not cached)."""
    seen: list[str] = []
    original = ScriptRegistry._expand

    def counting(self: ScriptRegistry, source: str, names: set[str], flags: Any) -> str:
        if len(names) == 1:  # the top-level call of one script
            seen.append(next(iter(names)))
        return original(self, source, names, flags)

    monkeypatch.setattr(ScriptRegistry, "_expand", counting)
    return seen


def _all(reg: ScriptRegistry) -> dict[str, Any]:
    return {name: reg.get(name) for name in SCRIPT_NAMES}


def test_the_same_composition_is_expanded_once_per_process(expansions: list[str]) -> None:
    first = ScriptRegistry()
    first.add_slot("accept", "refuse-bad", REFUSE_BAD)
    a = _all(first)
    before = len(expansions)
    second = ScriptRegistry()
    second.add_slot("accept", "refuse-bad", REFUSE_BAD)
    b = _all(second)
    assert len(expansions) == before, "the second registry expanded its scripts again"
    assert all(a[n] is b[n] for n in SCRIPT_NAMES)
    assert "bad jobs are refused here" in b["enqueue"].source


def test_every_change_of_a_composition_gets_its_own_text(expansions: list[str]) -> None:
    plain = _all(ScriptRegistry())["enqueue"]
    reg = ScriptRegistry()
    assert reg.get("enqueue") is plain
    reg.add_slot("accept", "refuse-bad", REFUSE_BAD)  # after the registry composed
    with_bad = reg.get("enqueue")
    assert with_bad.sha != plain.sha and "'bad'" in with_bad.source
    reg.add_slot("accept", "refuse-bad", REFUSE_WORSE)  # replaced under the same name
    worse = reg.get("enqueue")
    assert "'worse'" in worse.source and "'bad'" not in worse.source
    reg.add_slot("accept", "first", REFUSE_BAD, order=-1)
    both = reg.get("enqueue").source
    assert both.index("'bad'") < both.index("'worse'")
    reg.add_slot("accept", "first", REFUSE_BAD, order=1)  # the same fragment, run later
    assert reg.get("enqueue").source.index("'bad'") > reg.get("enqueue").source.index("'worse'")
    reg.remove_slot("accept", "first")
    reg.remove_slot("accept", "refuse-bad")
    assert reg.get("enqueue") is plain
    reg.add_fragment("lib_base", reg._fragment("lib_base") + "\n-- a fragment of our own\n")
    own = reg.get("enqueue")
    assert own is not plain and "a fragment of our own" in own.source
    assert ScriptRegistry().get("enqueue") is plain


class _Text:
    def __init__(self, source: str) -> None:
        self.source = source


def test_the_cache_keeps_a_script_only_while_something_holds_it() -> None:
    cache: ExpandedScripts[_Text] = ExpandedScripts()
    held = _Text("kept")
    cache.put(("a", "1"), held)
    cache.put(("b", "1"), _Text("dropped"))
    gc.collect()
    assert cache.get(("a", "1")) is held and cache.get(("b", "1")) is None
    del held
    gc.collect()
    assert cache.get(("a", "1")) is None and len(cache) == 0


def test_the_cache_is_safe_from_many_threads() -> None:
    cache: ExpandedScripts[_Text] = ExpandedScripts()
    keep = [_Text("s" * n) for n in range(1, 10)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(2000):
                key = (str(i % 37), str(t % 3))
                cache.put(key, keep[i % 9])
                got = cache.get(key)
                assert got is None or got.source.startswith("s")
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(cache) == 37 * 3


@pytest.fixture
async def factory(backend_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    f = QueueFactory(backend_url, prefix)
    yield f
    await f.aclose()


@pytest.mark.parametrize("refusing_first", [True, False])
async def test_queues_composed_differently_run_their_own_scripts(
    factory: QueueFactory, refusing_first: bool
) -> None:
    async def refusing() -> Any:
        q = factory("refusing")
        q.scripts.add_slot("accept", "refuse-bad", REFUSE_BAD)
        with pytest.raises(JobRefusedError, match="bad jobs are refused here"):
            await q.add_job("bad", {})
        return q

    async def plain() -> Any:
        q = factory("plain")
        await q.add_job("bad", {}, job_id="kept")
        return q

    order = [refusing, plain] if refusing_first else [plain, refusing]
    queues = [await make() for make in order]
    for q in queues:  # each again, after the other composed its scripts
        if q.name == "plain":
            await q.add_job("bad", {}, job_id="kept-2")
            assert {j.id for j in await q.get_jobs_by_status("waiting")} >= {"kept", "kept-2"}
        else:
            with pytest.raises(JobRefusedError):
                await q.add_job("bad", {})
            assert await q.get_jobs_by_status("waiting") == []

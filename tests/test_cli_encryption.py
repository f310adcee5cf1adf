"""``kitium-queue encryption status|rotate APP`` and encrypted jobs in ``job`` / ``dlq list``.

The app module holds the keys (read from environment variables, as an application
would); the CLI prints key ids and progress, shows encrypted payloads as
``<encrypted ...>``, and never prints plaintext or key material.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kitium_queue.cli import main
from kitium_queue.features.encryption import generate_key

K1, K2 = generate_key(), generate_key()
MARK = "CLI-PLAINTEXT-9d2b"


@pytest.fixture
def app(
    tmp_path: Path, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("KQ_CLI_K1", K1)
    monkeypatch.setenv("KQ_CLI_K2", K2)
    module = f"kq_cli_enc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.encryption import EncryptionManager, KeyConfig\n"
        f"queue = JobQueue('ce', redis={redis_url!r}, prefix={prefix!r})\n"
        "enc = EncryptionManager(queue, keys=[KeyConfig.from_env('KQ_CLI_K1', 'k1'),\n"
        "    KeyConfig.from_env('KQ_CLI_K2', 'k2', 'aes-256-cbc')], rotation_grace_ms=0)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def _add(module: str) -> list[str]:
    mod = __import__(module)

    async def go() -> list[str]:
        ids = [
            await mod.queue.add_job("pay", {"card": MARK, "i": i}, encrypted=True)
            for i in range(30)
        ]
        await mod.queue.close()
        return ids

    return asyncio.run(go())


def test_status_rotate_and_redacted_job(app: str) -> None:
    runner = CliRunner()
    ids = _add(app)
    target = f"{app}:queue"
    out = runner.invoke(main, ["encryption", "status", target])
    assert out.exit_code == 0, out.output
    assert "current key\tk1" in out.output and "held here\tk1, k2" in out.output
    assert K1 not in out.output and K2 not in out.output

    out = runner.invoke(main, ["job", target, ids[0]])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["data"] == "<encrypted key=k1 aes-256-gcm>" and MARK not in out.output
    # jobs show (text and JSON) and jobs list: the payload stays redacted, and a data
    # filter cannot probe it (a redacted payload has no fields to match).
    for extra in ([], ["--json"]):
        out = runner.invoke(main, ["--plain", "jobs", "show", target, ids[0], *extra])
        assert out.exit_code == 0, out.output
        assert "<encrypted key=k1 aes-256-gcm>" in out.output and MARK not in out.output
    out = runner.invoke(main, ["jobs", "list", target, "--data", f"card={MARK}", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["jobs"] == [], out.output

    out = runner.invoke(main, ["encryption", "rotate", target, "k1", "k2", "--run"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("[") and "k1->k2 running" in lines[0]
    assert "100.0%" in lines[-1] and " done " in lines[-1] and "re-encrypted 30" in lines[-1]

    out = runner.invoke(main, ["encryption", "status", target, "--json"])
    st = json.loads(out.output)
    assert st["current_key_id"] == "k2" and st["state"] == "done"
    assert st["reencrypted"] == 30 and st["undecryptable"] == 0

    out = runner.invoke(main, ["job", target, ids[1]])
    assert json.loads(out.output)["data"] == "<encrypted key=k2 aes-256-cbc>"

    out = runner.invoke(main, ["encryption", "rotate", target, "k1", "k2", "--json"])
    assert out.exit_code != 0 and "current key is 'k2'" in out.output

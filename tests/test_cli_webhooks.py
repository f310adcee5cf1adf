"""``kitium-queue webhooks list|show|history|dlq|replay APP`` (text and ``--json``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
    verify_webhook,
)

pytestmark = pytest.mark.redis_only


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('clihooks', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_cli_wh") as module:
        yield f"{module}:queue"


def _dead_delivery(redis_url: str, prefix: str, secret: str) -> str:
    """An endpoint on a closed port with no retries: its event ends in the webhook DLQ."""

    async def go() -> str:
        q = JobQueue("clihooks", redis=redis_url, prefix=prefix)
        m = WebhookManager(q, allow_networks=["127.0.0.0/8"], poll_ms=10)
        await m.register_webhook(
            WebhookConfig(
                url="http://127.0.0.1:9/hook",
                id="billing",
                secret=secret,
                max_retries=0,
                events=["invoice-paid"],
                description="billing service",
            )
        )
        await m.service.start(q)
        eid = await m.send_event(WebhookEvent("invoice-paid", {"invoice": 1}, id="evt_cli1"))
        for _ in range(500):
            if await m.list_dlq():
                break
            await asyncio.sleep(0.01)
        await m.service.stop()
        await q.close()
        return eid

    return asyncio.run(go())


def test_webhooks_commands(app: str, redis_url: str, prefix: str) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["webhooks", "list", app])
    assert out.exit_code == 0 and "no webhooks" in out.output
    secret = generate_secret()
    eid = _dead_delivery(redis_url, prefix, secret)

    out = runner.invoke(main, ["webhooks", "list", app])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("billing\tguaranteed\tactive\tinvoice-paid\thttp://127.0.0.1:9")
    listed = json.loads(runner.invoke(main, ["webhooks", "list", app, "--json"]).output)
    assert [h["id"] for h in listed] == ["billing"]
    show = runner.invoke(main, ["webhooks", "show", app, "billing", "--json"])
    shown = json.loads(show.output)
    assert shown["description"] == "billing service" and shown["stats"]["dlq"] == 1
    for res in (out, show):
        assert secret not in res.output and secret.split("_", 1)[1] not in res.output
    missing = runner.invoke(main, ["webhooks", "show", app, "nope"])
    assert missing.exit_code != 0 and "no webhook 'nope'" in missing.output

    hist = json.loads(runner.invoke(main, ["webhooks", "history", app, "billing", "--json"]).output)
    assert [(h["event_id"], h["state"], h["attempts"]) for h in hist] == [(eid, "dead", 1)]
    assert "ConnectError" in hist[0]["history"][0]["error"]
    text = runner.invoke(main, ["webhooks", "dlq", app]).output
    assert text.startswith(f"billing\t{eid}\tinvoice-paid\tattempts=1")

    assert runner.invoke(main, ["webhooks", "replay", app, "--event", eid]).exit_code != 0
    one = runner.invoke(
        main, ["webhooks", "replay", app, "--webhook", "billing", "--event", eid, "--json"]
    )
    assert json.loads(one.output) == {"replayed": 1}
    assert "the webhook DLQ is empty" in runner.invoke(main, ["webhooks", "dlq", app]).output
    again = runner.invoke(main, ["webhooks", "replay", app])
    assert again.output == "replayed 0\n"


def test_deliver_runs_the_apps_delivery_service(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """``webhooks deliver`` uses the app's own manager (its secret) and stops on SIGTERM;
    an app without a manager is refused."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from chaos.receiver import Receiver

    secret = generate_secret()
    module = f"kq_cli_whd_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.webhooks import WebhookManager\n"
        f"queue = JobQueue('clihooks', redis={redis_url!r}, prefix={prefix!r})\n"
        f"webhooks = WebhookManager(queue, secrets={{'ship': {secret!r}}},\n"
        "                          allow_networks=['127.0.0.0/8'], poll_ms=10)\n"
        f"bare = JobQueue('clihooks', redis={redis_url!r}, prefix={prefix!r})\n"
    )

    async def go() -> list[Any]:
        rec = await Receiver().start()
        q = JobQueue("clihooks", redis=redis_url, prefix=prefix)
        m = WebhookManager(q, allow_networks=["127.0.0.0/8"], run_service=False)
        await m.register_webhook(WebhookConfig(url=rec.url, id="ship", events=["shipped"]))
        await m.send_event(WebhookEvent("shipped", {"order": 1}))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
            ),
        }
        cli = [
            sys.executable,
            "-c",
            "from kitium_queue.cli import main; main()",
            "webhooks",
            "deliver",
        ]
        refused = await asyncio.create_subprocess_exec(
            *cli, f"{module}:bare", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await refused.communicate()
        assert refused.returncode != 0 and b"constructs no WebhookManager" in err
        proc = await asyncio.create_subprocess_exec(*cli, f"{module}:queue", cwd=tmp_path, env=env)
        try:
            for _ in range(1000):
                if rec.ok():
                    break
                await asyncio.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
        await rec.stop()
        await q.close()
        assert code == 0
        return rec.ok()

    (got,) = asyncio.run(go())
    verify_webhook(got.body, got.headers, secret)
    assert got.json()["data"] == {"order": 1}

"""The advanced configuration's sections never show a secret in their repr().

``docs/advanced-config.md`` says the encryption keys, the webhook secrets (a mapping
of them, or the callable that reads your vault) and the passwords in a region's Redis
URL are never printed: ``to_dict()`` / ``effective()`` leave them out, and so does the
sections' ``repr()`` (a printed or logged config, a crash report that records the
locals of a frame). Before, the dataclasses' generated repr showed them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kitium_queue.errors import ConfigurationError
from kitium_queue.features.advanced import (
    AdvancedQueueConfig,
    EncryptionConfig,
    RegionConfig,
    WebhooksConfig,
)
from kitium_queue.features.encryption import generate_key
from kitium_queue.features.webhooks import generate_secret
from kitium_queue.features.webhooks.secretstore import SecretStore

PASSWORD = "hunter2-rv60"


def test_section_reprs_never_show_secrets_keys_or_url_passwords() -> None:
    secret, key = generate_secret(), generate_key()
    url = f"redis://:{PASSWORD}@10.0.0.1:6379/0"
    cfg = AdvancedQueueConfig.parse(
        {
            "webhooks": {"secrets": {"pay": [secret]}, "secret_cache_s": 5},
            "encryption": {"keys": [{"key_id": "k1", "key": key}]},
            "global_queue": {"regions": [{"region": "eu", "redis": url, "is_primary": True}]},
        }
    )
    shown = [
        repr(cfg),
        str(cfg),
        repr(cfg.webhooks),
        repr(cfg.encryption),
        repr(cfg.global_queue),
        repr(WebhooksConfig(secrets={"pay": secret})),
        repr(EncryptionConfig(keys=[{"key_id": "k1", "key": key}])),
        repr(RegionConfig("eu", redis=url)),
    ]
    for text in shown:
        assert secret not in text and key not in text and PASSWORD not in text, text
    # The rest still shows, and the hidden fields are still there to use.
    assert "secret_cache_s=5.0" in repr(cfg.webhooks) and "region='eu'" in repr(cfg)
    assert cfg.webhooks.secrets == {"pay": [secret]}
    assert cfg.encryption.keys[0]["key"] == key
    assert cfg.global_queue.regions[0].redis == url


def test_a_callable_source_is_left_out_of_the_repr_too() -> None:
    def vault(webhook_id: str) -> str | None:
        return None

    cfg = WebhooksConfig(secrets=vault, secret_timeout_s=2)
    assert "vault" not in repr(cfg) and "secret_timeout_s=2.0" in repr(cfg)
    assert cfg.secrets is vault
    # Equality still compares every field (the source included).
    assert cfg == WebhooksConfig(secrets=vault, secret_timeout_s=2)
    assert cfg != WebhooksConfig(secrets=None, secret_timeout_s=2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: SecretStore(cache_s=10**5000),
        lambda: SecretStore(timeout_s=-(10**5000)),
    ],
    ids=["huge cache", "huge negative timeout"],
)
def test_a_huge_number_of_seconds_is_a_configuration_error(call: Any) -> None:
    """A number too long to print (Python refuses to format an int of over 4,300 digits)
    was a ValueError from the message's own formatting, not the ConfigurationError
    naming the option."""
    with pytest.raises(ConfigurationError, match="must be a number of seconds"):
        call()


@pytest.mark.redis_only
async def test_regions_start_when_loading_a_queues_scripts_outlasts_the_health_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A region's own queue (its pinned jobs) loaded its scripts in its first ``op``,
    under the health checks' short deadline (0.5 s here): on a busy host that first
    contact missed it and ``initialize`` failed with a bare ``TimeoutError`` (seen in a
    full-suite run). Every queue of a region now has its first contact under the
    first-contact deadline (10 s)."""
    from kitium_queue.scripts import ScriptRegistry
    from regionpair import EU, US, region_pair

    real_load = ScriptRegistry.load

    async def slow_load(self: ScriptRegistry, client: Any) -> None:
        await asyncio.sleep(0.8)  # past the health deadline, well within the first contact's
        await real_load(self, client)

    monkeypatch.setattr(ScriptRegistry, "load", slow_load)
    async with region_pair(28460, "slowload", 2000) as (m, _):
        job = await m.add_job("work", {"n": 1}, job_id="slow-1")
        assert job == "slow-1"
        for region in (US, EU):
            assert m.region(region).reachable

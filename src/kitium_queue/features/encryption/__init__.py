"""Payload encryption with key rotation (``EncryptionManager``); see ``docs/encryption.md``.

Needs the optional ``cryptography`` package: ``pip install "kitium-job-queue[encryption]"``
(``pip install -e ".[encryption]"`` in a clone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .crypto import (
        DecryptionError,
        EncryptionError,
        KeyConfig,
        KeyMismatchError,
        KeyNotHeldError,
        KeyRecordDamagedError,
        generate_key,
    )
    from .manager import EncryptionManager
    from .rotation import RotationStatus, RotationTarget

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "DecryptionError": "crypto",
    "EncryptionError": "crypto",
    "KeyConfig": "crypto",
    "KeyMismatchError": "crypto",
    "KeyNotHeldError": "crypto",
    "KeyRecordDamagedError": "crypto",
    "generate_key": "crypto",
    "EncryptionManager": "manager",
    "RotationStatus": "rotation",
    "RotationTarget": "rotation",
}

__all__ = [
    "DecryptionError",
    "EncryptionError",
    "EncryptionManager",
    "KeyConfig",
    "KeyMismatchError",
    "KeyNotHeldError",
    "KeyRecordDamagedError",
    "RotationStatus",
    "RotationTarget",
    "generate_key",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

"""Replica-acknowledged writes (``WAIT`` after an enqueue or an outcome): ``ReplicaAcks``
(``acks.py``), and the ``kitium-queue replicas`` command (``cli.py``). See
docs/replicas.md."""

from .acks import MAX_WAIT_TIMEOUT_MS, ReplicaAcks, replication_status

__all__ = ["MAX_WAIT_TIMEOUT_MS", "ReplicaAcks", "replication_status"]

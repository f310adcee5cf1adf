"""The scenarios of issue 4, items 1-8, and of the features (9 and up); importing
this package registers them all."""

from . import (  # noqa: F401
    s1_sigkill,
    s2_crash_steps,
    s3_sigterm,
    s4_freeze,
    s5_redis_restart,
    s6_network,
    s7_clock_skew,
    s8_poison,
    s9_groups,
    s10_breaker,
    s11_encryption_rotation,
    s12_webhooks,
    s13_metrics,
    s14_workflows,
    s15_slow_redis,
    s16_replica_acks,
    s17_audit,
    s18_erasure,
    s19_tenancy,
    s20_regions,
    s21_redis_full,
)

"""Building the limits gate from the settings: Redis-backed when `redis_url` is set, else in-process."""

from __future__ import annotations

from collections.abc import Callable

from redis.exceptions import RedisError

from parley.access.limit_counters import Counters, LocalCounters
from parley.access.limit_leases import LeasedCounters
from parley.access.limit_redis import RedisCounters
from parley.access.limits import LimitGate, model_limits
from parley.config import ConfigError, Settings
from parley.redis_connect import connect_redis


def limits_may_apply(settings: Settings) -> bool:
    """Whether any generation may meet a limit: a model has limits, or keys (which may carry their
    own) may be required. When not, there is no gate and no header middleware at all."""
    return bool(model_limits(settings.models)) or settings.auth != "off"


async def open_limit_gate(
    settings: Settings, *, keys_required: bool, on_refused: Callable[[str, str], None] | None = None
) -> LimitGate | None:
    """The limits gate, when a model has limits or keys are required (they may carry limits)."""
    if not model_limits(settings.models) and not keys_required:
        return None
    counters: Counters
    if settings.redis_url is not None:
        redis = connect_redis(settings.redis_url)
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            await redis.aclose()
            raise ConfigError(f"redis_url: Redis can't be reached ({exc}); limits need it") from exc
        counters = LeasedCounters(RedisCounters(redis, f"{settings.redis_prefix}:"))
    else:
        counters = LocalCounters()
    return LimitGate(
        counters, model_limits(settings.models), reserve_tokens=settings.limit_reserve_tokens, on_refused=on_refused
    )

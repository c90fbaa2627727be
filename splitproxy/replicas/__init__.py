"""Replicas: several ``splitproxy serve`` processes sharing their rollout state through Redis.

`redisstore.RedisStateStore` is the Redis `rollout.store.StateBackend`; `lease` holds the
leader lease (the one replica that decides) and its fencing tokens; `connection` builds the
clients (short timeouts) and redacts URLs. ``docs/scale-out.md`` explains the whole.
"""

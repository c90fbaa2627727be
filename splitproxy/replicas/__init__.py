"""Replicas: several ``splitproxy serve`` processes sharing one Redis act as one proxy.

`redisstore.RedisStateStore` is the Redis `rollout.store.StateBackend`; `lease` holds the
leader lease (the one replica that decides) and its fencing tokens; `connection` builds the
clients (short timeouts) and redacts URLs; `link.ReplicaLink` ties a replica to the others
(pooled observations, the leader's routing state adopted by every replica, admin writes
forwarded to the leader). ``docs/scale-out.md`` explains the whole.
"""

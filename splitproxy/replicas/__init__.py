"""Replicas: several ``splitproxy serve`` processes sharing one Redis act as one proxy.

See ``link.py`` for how they agree (a leader lease with a fencing token, pooled observations,
the leader's routing state adopted by every replica)."""

"""Several worker processes on one host, acting as one proxy (``splitproxy serve --workers N``).

- `supervisor`: binds the listeners, starts the workers, relays between them, restarts a
  worker that dies, forwards SIGHUP and SIGTERM;
- `child`: a worker process's entry point;
- `link`: a worker's side (what `server.Server` asks of it; the leader's pool, a follower's
  publishing);
- `pooling`: the workers' live-window buckets summed per second, for the one analyzer (pure);
- `counts`: ``/metrics`` summed over the workers;
- `ipc`: the messages and their framing.

See docs/scale-out.md.
"""

"""Progressive delivery: the analyzer that decides, the evidence it weighs, and the
controller that turns its decisions into weights, hooks and a ledger.

The analyzer (the machine), its evidence, the codec of its state, the sequential tests, the
windows, the latency sketch and the samples are pure (no clock, no randomness, no IO); the
controller, persistence, hooks, external checks and the synthetic traffic are the IO around
them.
"""

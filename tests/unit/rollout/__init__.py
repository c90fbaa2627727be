"""Unit tests of the rollout layer: the analyzer machine, its evidence, codec and statistics."""

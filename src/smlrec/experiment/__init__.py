"""Offline experiments: the replay loop (test-then-train), the results directory, sweeps, presets."""

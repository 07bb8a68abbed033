"""Training: configs and presets, the sharded jitted step, the loop, checkpoints, the command."""

"""The single controller of r1ray (import name `r1ray.controller`): training loop, checkpoints, trackers, CLI."""

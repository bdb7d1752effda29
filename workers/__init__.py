"""Ray actors of r1ray (import name `r1ray.workers`): one role per file, worker groups, placement, weight sync.

Workers never import the controller (docs/design.md §1).
"""

"""Chains: profiles, the planner, resources, the launcher, status and prepare."""

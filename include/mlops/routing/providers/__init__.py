"""Capacity providers, one per place the router can look: Kubernetes API, inventory file, this machine.

Each has ``snapshot() -> CapacitySnapshot`` (the CapacityProvider protocol in routing.router).
"""

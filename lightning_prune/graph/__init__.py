"""Concat-aware channel dependency graph: trace a real forward, derive coupled channel groups."""

from lightning_prune.graph.dependency_graph import DependencyGraph, Plan, PruneResult
from lightning_prune.graph.groups import Group, Member
from lightning_prune.graph.trace import GraphTraceError, trace_channels

__all__ = ["DependencyGraph", "GraphTraceError", "Group", "Member", "Plan", "PruneResult", "trace_channels"]

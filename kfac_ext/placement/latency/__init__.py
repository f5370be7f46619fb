"""Latency placement in the paper's model (Tarnawski et al. 2020; see model.py)."""
from .model import Split, check_split, evaluate, latency_of

__all__ = ["Split", "check_split", "evaluate", "latency_of"]

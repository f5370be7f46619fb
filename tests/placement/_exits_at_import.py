"""A script-like module that exits when imported (for the --module fault tests)."""

import sys

import torch.nn as nn

sys.exit(3)


def model() -> nn.Module:  # never reached
    return nn.Linear(2, 2)

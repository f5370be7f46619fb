"""A module that parses the command line at import, as a training script does."""

import argparse

import torch.nn as nn

ARGS = argparse.ArgumentParser().parse_args()  # kfac-ext's own flags would be "unrecognized"


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

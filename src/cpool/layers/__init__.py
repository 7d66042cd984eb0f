"""Layers: trainable building blocks with forward and backward (see base.Layer)."""
from .base import Layer
from .pooling import (AvgPool1d, AvgPool2d, AvgPool3d, LPPool1d, LPPool2d, LPPool3d, MaxPool1d,
                      MaxPool2d, MaxPool3d)

"""Layers: trainable building blocks with forward and backward (see base.Layer)."""
from .base import Layer
from .activation import (GELU, Dropout, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax,
                         Tanh)
from .conv import Conv1d, Conv2d
from .linear import Flatten, Identity, Linear
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import (AvgPool1d, AvgPool2d, AvgPool3d, LPPool1d, LPPool2d, LPPool3d, MaxPool1d,
                      MaxPool2d, MaxPool3d)
from .fractional import FractionalMaxPool2d, FractionalMaxPool3d
from .unpool import MaxUnpool1d, MaxUnpool2d, MaxUnpool3d
from .binned import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AdaptiveMaxPool1d,
                     AdaptiveMaxPool2d, AdaptiveMaxPool3d, BinPool, GlobalAvgPool, GlobalLPPool,
                     GlobalMaxPool, SpatialPyramidPool)
from .roi import RoIAlign, RoIPool
from .sequence import SequencePool

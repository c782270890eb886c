"""Layers that own their parameters and build graphs: ``miniflow.nn``.

>>> from miniflow import Input, nn
>>> net = nn.Sequential(nn.Conv2D(1, 8, 3, padding="same"), nn.BatchNorm2d(8), nn.ReLU(),
...                     nn.MaxPool2D(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
>>> logits = net(Input("images"))

See :mod:`miniflow.nn.layers` for the layers and how to add one,
:mod:`miniflow.nn.recurrent` for RNN, LSTM and GRU, :mod:`miniflow.nn.attention`
for attention and transformer blocks, and
:mod:`miniflow.nn.init` for the initialisers.
"""
from .init import INITIALIZERS
from .layers import (ELU, GELU, LAYERS, AvgPool2D, BatchNorm1d, BatchNorm2d, Conv2D, Dropout,
                     Embedding, Flatten, Identity, Layer, LayerNorm, LeakyReLU, Linear, MaxPool2D,
                     ReLU, Residual, Sequential, Sigmoid, Tanh, from_record, register)
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .attention import MultiHeadAttention, PositionalEmbedding, TransformerBlock
from .lm import CharLM

__all__ = ["Layer", "LAYERS", "INITIALIZERS", "register", "from_record", "Linear", "Conv2D",
           "MaxPool2D", "AvgPool2D", "Flatten", "Dropout", "LayerNorm", "BatchNorm1d",
           "BatchNorm2d", "Embedding", "Sequential", "Residual", "ReLU", "Sigmoid", "Tanh",
           "GELU", "LeakyReLU", "ELU", "Identity", "RNNCell", "LSTMCell", "GRUCell", "RNN",
           "LSTM", "GRU", "MultiHeadAttention", "PositionalEmbedding", "TransformerBlock",
           "CharLM"]

"""Oracle specs of the elementwise nodes (see tests/oracle.py)."""
import torch

from miniflow import Add, Div, Exp, Log, Mul, Neg, ReLU, Sigmoid, Sub, Tanh
from oracle import OpSpec, broadcasting, unary

SPECS = [
    OpSpec("Add", Add, torch.add, broadcasting(), elementwise=True, arity=2),
    OpSpec("Sub", Sub, torch.sub, broadcasting(), elementwise=True, arity=2),
    OpSpec("Mul", Mul, torch.mul, broadcasting(), elementwise=True, arity=2),
    OpSpec("Div", Div, torch.div, broadcasting(low=0.2, high=3.0), elementwise=True,
           domain="positive", arity=2),
    OpSpec("Neg", Neg, torch.neg, unary(), elementwise=True),
    OpSpec("Sigmoid", Sigmoid, torch.sigmoid, unary(low=-30, high=30), elementwise=True),
    OpSpec("Tanh", Tanh, torch.tanh, unary(), elementwise=True),
    OpSpec("ReLU", ReLU, torch.relu, unary(avoid=(0.0,)), elementwise=True),
    OpSpec("Exp", Exp, torch.exp, unary(), elementwise=True),
    OpSpec("Log", Log, torch.log, unary(low=1e-3, high=5.0), elementwise=True, domain="positive"),
]

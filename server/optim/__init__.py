"""Prompt optimization engines: ask/tell objects over hard and soft prompt spaces."""

from promptbo.server.optim.base import Engine, make_engine, register_strategy, strategy_names

__all__ = ["Engine", "make_engine", "register_strategy", "strategy_names"]

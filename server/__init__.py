"""The promptbo server: studies, storage and the optimization engine behind a gRPC servicer.

Needs the ``server`` extra (torch, botorch, sqlalchemy). Start one with
``promptbo serve`` or :func:`promptbo.server.app.create_server`.
"""

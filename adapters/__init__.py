r"""Thin glue between jko-plugin and the libraries around it, installed as ``jko_plugin.adapters``."""

__all__: list[str] = []

"""Reproduction code: the toy series, the mini-model corpus, train-mini and the demo.

The top layer: it may use ingest/, warehouse/ and queries/; nothing below imports it.
torch and transformers are imported inside the functions that need them, never here.
"""

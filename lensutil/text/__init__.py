"""Tokens in and out (tokenize, masks, positions) and generation: plain functions that take a model."""

"""Bundled experiment presets (YAML package data), read by :mod:`eqprop.train.config`."""

"""Adapters that make bcfl_engine the aggregator of FL frameworks (Flower first)."""

"""A Flower app whose aggregator is bcfl_engine: robust rules, signed replies, chain commits."""

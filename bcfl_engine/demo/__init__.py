"""``bcfl demo``: hospitals on real medical data, some of them Byzantine, rounds on a chain.

:mod:`.data` loads a data set that ships with scikit-learn and splits it non-IID across
hospitals; :mod:`.train` trains a small torch model locally; :mod:`.attacks` turns a hospital
Byzantine; :mod:`.run` runs the rounds through :class:`~bcfl_engine.round.AggregationRound` for
each rule compared, and writes ``summary.json``, ``accuracy.png`` (drawn by :mod:`.plot`) and,
on the embedded chain, the chain's journal that ``bcfl audit`` replays.
"""

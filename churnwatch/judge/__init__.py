"""The judge: how good a score is on a shop's own history.

The classic buy-till-you-die models it is compared with (:mod:`~churnwatch.judge.classic`), the
measures (:mod:`~churnwatch.judge.measures`: ROC AUC with DeLong's paired test, Brier skill,
reliability), the backtest's report (:mod:`~churnwatch.judge.report`) and the zoo's
side-by-side table (:mod:`~churnwatch.judge.zoo_table`). Pure arithmetic over per-customer rows:
it imports the scoring core's configuration and nothing that runs the dataflow or reads a
store; ``churnwatch.backtest`` feeds it.
"""

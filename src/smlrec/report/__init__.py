"""Reports drawn from results directories: tables, figures, and the page that ties them together.

Reads only the results-directory contract of :mod:`smlrec.experiment.results`, never the
strategies, so a strategy added later appears in every table and figure without a change here.
"""

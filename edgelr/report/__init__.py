"""Results history store, regression statistics and Markdown/HTML reports.

- :mod:`edgelr.report.history`: the SQLite history every ``bench``/``regress``/``compress`` run appends to.
- :mod:`edgelr.report.stats`: Mann-Whitney U + effect-threshold regression verdicts, change-point location.
- :mod:`edgelr.report.render`: Markdown/HTML/JSON reports with matplotlib figures (imported lazily).
"""

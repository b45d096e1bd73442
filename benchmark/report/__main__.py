"""`python -m benchmark.report results/<experiment>`: rewrite an experiment's tables and plots."""
from benchmark.report.writer import main

main()

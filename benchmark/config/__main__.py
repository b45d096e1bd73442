"""`python -m benchmark.config --schema`: the experiment file's JSON schema, for editors."""
import sys

from benchmark.config.experiment import main

sys.exit(main())

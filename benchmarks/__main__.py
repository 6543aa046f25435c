"""``python -m benchmarks [options]``; ``python -m benchmarks --help`` lists the options."""

from .cli import main

main()

"""``python bench.py ...``: the benchmark (``benchmarks/``, the same as ``python -m benchmarks ...``)."""
from benchmarks.cli import main

if __name__ == '__main__':
    main()

"""``python -m ipt_data`` = ``ipt-data``, for machines where the package is on PYTHONPATH but
not installed."""

from ipt_data.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    main()

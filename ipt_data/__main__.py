"""``python -m ipt_data`` = ``ipt-data``, for machines where the package is on PYTHONPATH but
not installed."""

from ipt_data.cli import main

main()

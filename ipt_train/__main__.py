"""``python -m ipt_train`` = ``ipt-train``, for machines where the package is on PYTHONPATH but
not installed (e.g. a lent GPU machine running pipelines/gpu-figures)."""

from ipt_train.cli import main

main()

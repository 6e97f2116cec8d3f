"""``python -m ipt_train`` = ``ipt-train``, for machines where the package is on PYTHONPATH but
not installed (e.g. a GPU machine running pipelines/gpu-figures from a copied checkout)."""

from ipt_train.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    main()

"""Benchmarks of ``ipt_train``, one module per subject: the model's speed and memory against the
official code (:mod:`.model`, ``ipt-train bench``), SupCon's cost (:mod:`.supcon`), the Adam
implementations (:mod:`.adam`) and the training loader (:mod:`.loader`). They print figures; the
records of what they measured are in benchmarks/results/."""

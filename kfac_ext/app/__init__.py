"""The training application built on the preconditioner: the ``kfac-ext train``
race (SGD / K-FAC on digits or CIFAR-10), its data, models, checkpoints and
plots, and the ``kfac-ext bench`` scaling model.

Nothing in the library core (``kfac_ext.KFACPreconditioner``, ``kfac_ext.ops``)
imports from here; this package needs the ``[app]`` extra (tqdm, matplotlib,
scikit-learn).
"""

"""The registered architecture families, one module each: every public module of this package
registers its builder with :func:`~hpsearch.models.registry.register_model` when imported, and
the registry imports them all on first use. A new architecture is one new file here (see
``mlp.py``); shared layers live in the private ``_layers.py``, which the registry skips.
"""

"""The registered data sets, one module each: every public module of this package calls
:func:`~hpsearch.data_utils.registry.register_dataset` when imported, and the registry imports
them all on first use. A new data set is one new file here (see ``fashion_mnist.py``); a helper
module that registers nothing belongs one level up, in ``hpsearch.data_utils``.
"""

"""The ``producer`` command line: enqueue runs, watch, collect and evaluate them."""

"""teelab: confidential data science in Jupyter.

The namespace root holds what every part shares: error types, locations on disk, time helpers and the
``teelab`` command line. The parts live in their own folders and are imported as ``teelab.<part>``.
"""

__version__ = "0.1.0"

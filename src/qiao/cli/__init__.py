"""The ``qiao`` command: a thin, standard-library-only client of qiaod."""

"""Applications on top of the library: the ``fedllmrec`` command line and the Flower app."""

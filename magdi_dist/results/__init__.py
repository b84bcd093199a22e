"""Results anyone can re-derive: a run's small raw files collected into ``docs/results/<name>/``
(``collect``, layout in ``files``), and every generated table, text and plot of the documents made
again from them between markers (``docs``; ``magdi-dist results [--check]``)."""

"""One file per workflow, each reading top to bottom like the data flow it runs (torchtune-style
recipes): ``train``, ``study``, ``evaluate``. The CLI and the ``ray_jobs/`` entrypoints only parse
arguments and call these; the components they compose live in the packages below."""

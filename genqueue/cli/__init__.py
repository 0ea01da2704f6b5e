"""The ``genqueue`` command line: the parser in :mod:`genqueue.cli.main`, most subcommands in a
module named after them (``up``, ``worker``, ``api``, ``flower``, ``dead``, ``batch``, ``usage``,
``check``), ``submit`` and ``status`` in :mod:`genqueue.cli.shell`, and the helpers they share
beside them; ``simulate`` and ``bench`` run :mod:`genqueue.simulator` and :mod:`genqueue.bench`."""

"""The ``genqueue`` command line: one module per subcommand."""

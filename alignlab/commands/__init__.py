"""The commands of the `alignlab` command line, one module each, on top of the library.

Every command module has ``add_arguments(parser)`` (its options) and ``run(args)`` (what it does, calling the
library with keywords); `alignlab.cli` holds the one table from command names to these modules and imports only the
module of the command that was asked for.
"""

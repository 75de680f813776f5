"""The ``supermix`` commands. Each module parses its arguments (``add_parser``) and composes
the library (``run``): :mod:`supermix.runtime`, :mod:`supermix.teachers`,
:mod:`supermix.mixed_set`, :mod:`supermix.generation`, :mod:`supermix.training`."""

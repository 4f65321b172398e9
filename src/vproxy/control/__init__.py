"""The control plane: the command language, its executor, controllers and config files.

Owns how operators change a running vproxy (console, RESP and HTTP controllers, saved
config files). Must not touch sockets outside the controllers, and nothing here but the
executor changes state. Submodules are imported by name; this package re-exports nothing.
"""

__all__: list[str] = []

"""The package version, in a module of its own: the manifest (its ``tool_version``) and the
``ipt-data`` CLI (``--version``) read it here, so that no module of the package imports the
package's public face, :mod:`ipt_data`, which imports them for type checkers (an import cycle;
tests/test_imports.py refuses one)."""

__version__ = "0.1.0"

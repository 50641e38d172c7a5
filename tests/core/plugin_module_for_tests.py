"""A plugin module loaded through a (faked) entry point in test_registry."""

from fffcore.hookspecs import hookimpl
from fffcore.reference.plugin import ReferenceBackend


class EntryPointedBackend(ReferenceBackend):
    name = "entrypointed"


@hookimpl
def register_backends(register):
    register(EntryPointedBackend())

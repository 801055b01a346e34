"""Errors of the torch-shaped front end.

`UnsupportedError` is what a torch name outside the supported set raises (`torch.compile_foo`, `nn.Conv2d`,
`t.scatter_`): one line naming it and pointing at the list in the README. It is an AttributeError, so `hasattr` and
`getattr(x, name, default)` keep working as they do on torch for names torch lacks.
"""

SUPPORTED_LIST = "the README's section 'Run your lecture code without torch' lists the supported names"


class UnsupportedError(AttributeError, NotImplementedError):
    """A torch name this engine does not provide."""

    def __init__(self, qualified_name, hint=""):
        self.qualified_name = qualified_name
        super().__init__(f"{qualified_name} is not supported by tinygrad_gpt{(': ' + hint) if hint else ''} "
                         f"({SUPPORTED_LIST})")


def unsupported_getattr(namespace):
    """A module-level __getattr__ (PEP 562) for a torch namespace ("torch", "torch.nn", ...): dunder and private
    names stay ordinary AttributeErrors (Python's and tools' probing), public ones raise UnsupportedError."""
    def __getattr__(name):
        if name.startswith("_"):
            raise AttributeError(f"module {namespace!r} has no attribute {name!r}")
        raise UnsupportedError(f"{namespace}.{name}")
    return __getattr__

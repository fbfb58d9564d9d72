"""Small shared vocabulary: the four machines of docs/math.md. No heavy imports here."""

from __future__ import annotations

from enum import Enum

from .errors import PatchdbError


class Machine(str, Enum):
    """The closed-form machines of docs/math.md "The four machines"."""

    IS = "is"  # ideal score: memorises whole training images
    LS = "ls"  # local score: same window position, zero padding
    ELS = "els"  # equivariant local score, circular padding
    BBELS = "bbels"  # boundary-broken ELS, zero padding (matches zero-padded CNNs)

    @classmethod
    def parse(cls, name: str | Machine) -> Machine:
        """Machine from a name in any case; a one-line error names the choices."""
        if isinstance(name, Machine):
            return name
        try:
            return cls(str(name).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise PatchdbError(f"unknown machine '{name}'; choose one of {choices}") from None

    @property
    def is_local(self) -> bool:
        return self is not Machine.IS

"""What the vendors' ``Session`` classes share: the reset policy as the pool's reset hook."""

from __future__ import annotations

from collections.abc import Callable

from django_lido.drivers import Conn


class SessionBase:
    """Per-physical-connection set-up and the reset policy of one pool."""

    def reset_auto(self, conn: Conn) -> None:
        """The full reset, only if the client can see that the session changed."""
        raise NotImplementedError

    def reset_full(self, conn: Conn) -> None:
        """The session as after connecting and setting up."""
        raise NotImplementedError

    def reset_hook(self, policy: str | Callable[[Conn], object]) -> Callable[[Conn], object] | None:
        """``Pool``'s reset for ``OPTIONS["pool"]["reset"]``: None for "rollback" (the pool
        rolls back anyway)."""
        if callable(policy):
            return policy
        return {"auto": self.reset_auto, "full": self.reset_full, "rollback": None}[policy]

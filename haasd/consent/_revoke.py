"""Tokens the server issued that haasd will not keep: revoked (RFC 7009), never orphaned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import anyio

from haasd.authclient import AuthClient, TokenTypeHint
from haasd.consent._advice import tokens_note
from haasd.secret import Secret
from haasd.tokens import TokenResponse

__all__ = ["REVOKE_DEADLINE", "Revocation", "revoke_answer", "revoke_token"]

#: the longest a revocation of tokens haasd cannot keep may take (it is shielded from
#: the request's own timeout: an orphaned token matters more than a late answer)
REVOKE_DEADLINE: Final = 15.0


@dataclass(frozen=True, slots=True)
class Revocation:
    """What became of tokens haasd did not keep."""

    #: True revoked; False not (no endpoint configured, or the request failed); None:
    #: no token reached haasd
    revoked: bool | None
    #: the same, for the operator and the answer (``""`` when no token reached haasd)
    note: str


async def revoke_token(auth: AuthClient, token: Secret | None, hint: TokenTypeHint) -> Revocation:
    """Revoke ``token`` at the server, if there is one and an endpoint is configured.

    Shielded and bounded: a request's timeout must not leave a token orphaned halfway.
    """
    revoked: bool | None = None
    if token is not None:
        revoked = False
        if auth.can_revoke:
            with anyio.CancelScope(shield=True), anyio.move_on_after(REVOKE_DEADLINE):
                revoked = await auth.revoke(token, hint=hint)
    return Revocation(revoked, tokens_note(revoked, auth.can_revoke))


async def revoke_answer(auth: AuthClient, answer: TokenResponse) -> Revocation:
    """Revoke a token answer haasd will not keep: its refresh token (which ends the
    grant's access tokens too, RFC 7009 §2.1), else its access token."""
    if answer.refresh_token is not None:
        return await revoke_token(auth, answer.refresh_token, "refresh_token")
    return await revoke_token(auth, answer.access_token, "access_token")

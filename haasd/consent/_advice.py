"""What a failed finish tells its caller, from what happened: pure text, no I/O.

Two facts decide the advice. Was the code sent (``sent``)? If not, the server never saw
it and the same callback can be finished again; if it was, the server may have spent it
and a retry can only get ``invalid_grant``: start a new consent. And did tokens reach
haasd that it cannot keep? Then they were revoked (RFC 7009) — or the operator hears that
they live on at the server, and what would have revoked them.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "NAME_THE_HUMAN",
    "UNNAMED_WARNING",
    "retry_message",
    "spent_message",
    "tokens_note",
    "unnamed_message",
]

#: why a consent without a human cannot end against a server that names no human
NAME_THE_HUMAN: Final = (
    "this server does not name the human in its token answer; start the consent with a "
    "human id (haasd consent start --human ID, or human_id in POST /v1/consents)"
)
#: ``consent start`` without a human, once a token answer has named no human
UNNAMED_WARNING: Final = (
    "the token server's last answer named no human: a consent started without a human id "
    "will be refused at finish; name the human (--human ID, or human_id)"
)


def tokens_note(revoked: bool | None, can_revoke: bool) -> str:
    """What became of the tokens the server issued, or ``""`` when none reached haasd.

    ``revoked`` is the revocation's outcome (None: nothing to revoke); ``can_revoke``
    whether a revocation endpoint is configured at all.
    """
    if revoked is None:
        return ""
    if revoked:
        return "the tokens HaaS issued were revoked"
    if can_revoke:
        return (
            "the tokens HaaS issued could not be revoked (the revocation request failed): "
            "they live on at the server until they expire"
        )
    return (
        "the tokens HaaS issued could not be revoked: configure haas.revocation_url "
        "(RFC 7009) so that haasd revokes what it cannot keep"
    )


def spent_message(reason: str, *, answered: bool, note: str) -> str:
    """The advice when the code reached the server: it is spent (``answered``: the server
    answered 2xx) or may be; a retry cannot work, a new consent can."""
    spent = "the code was spent at the server" if answered else "the code may have been spent"
    message = f"the code exchange failed after the code was sent ({reason}); {spent}"
    if note:
        message += f"; {note}"
    return f"{message}; start a new consent"


def unnamed_message(note: str) -> str:
    """The refusal of a consent without a human whose answer named none: the code is
    spent, nothing stored."""
    return f"{NAME_THE_HUMAN}; nothing was stored" + (f"; {note}" if note else "")


def retry_message(reason: str, expires_at: str) -> str:
    """The advice when the server never saw the code: the same callback works again."""
    return (
        f"the code exchange failed for now ({reason}); the code was not spent: finish the "
        f"same callback again before {expires_at}"
    )

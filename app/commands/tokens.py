"""``lenslab tokens``: create an API token for a user (printed once), list or revoke tokens."""

from __future__ import annotations

import argparse

from app.cli import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokens", help="API tokens")
    tsub = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create a token for user NAME and print it once")
    create.add_argument("name", help="the user who will own the token")
    create.add_argument("--label", default="cli", help="a name for the token (default: cli)")
    create.set_defaults(func=_create)
    ls = tsub.add_parser("list", help="list a user's tokens")
    ls.add_argument("name")
    ls.set_defaults(func=_list)
    rv = tsub.add_parser("revoke", help="revoke a token by id")
    rv.add_argument("token_id", type=int)
    rv.set_defaults(func=_revoke)


def _open():
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.session import Database

    settings = get_settings()
    upgrade(settings.database_url)
    return Database(settings)


def _create(args: argparse.Namespace) -> int:
    from app.services import tokens, users
    from app.services.errors import ServiceError

    db = _open()
    try:
        with db.session() as session:
            user = users.get_or_raise(session=session, username=args.name)
            row, plaintext = tokens.create(session=session, user=user, name=args.label)
    except ServiceError as exc:
        raise CommandError(str(exc)) from None
    finally:
        db.dispose()
    print(f"token {row.id} for {args.name} ({row.name}); shown once, store it now:")
    print(plaintext)
    return 0


def _list(args: argparse.Namespace) -> int:
    from app.services import tokens, users
    from app.services.errors import ServiceError

    db = _open()
    try:
        with db.session(write=False) as session:
            user = users.get_or_raise(session=session, username=args.name)
            for t in tokens.list_for_user(session=session, user=user):
                state = "revoked" if t.revoked_at else "live"
                print(f"{t.id:>4}  {t.prefix}…  {t.name:<20} {state:<8} last used {t.last_used_at or 'never'}")
    except ServiceError as exc:
        raise CommandError(str(exc)) from None
    finally:
        db.dispose()
    return 0


def _revoke(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from app.db.base import utcnow
    from app.db.models import ApiToken

    db = _open()
    try:
        with db.session() as session:
            n = session.execute(
                sa.update(ApiToken)
                .where(ApiToken.id == args.token_id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
            session.commit()
    finally:
        db.dispose()
    if not n:
        raise CommandError(f"no live token {args.token_id}")
    print(f"token {args.token_id} revoked")
    return 0

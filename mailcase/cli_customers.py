"""The ``customers`` command group: a customer's personal data, erased on request or by age.

``customers forget ADDRESS`` erases what is kept of one customer's address
(:mod:`mailcase.erasure`, the LFPDPPP's right of cancellation);
``customers purge --inactive-days N`` erases it for every customer with no open
case and no activity for N days (:mod:`mailcase.retention`). Without ``--yes``
both only say what would be erased, and change nothing. The addresses a purge
erases are printed, the admin's record of whose data was cancelled, and never
logged; files that could not be removed are said on stderr (exit 1), and the
next run tries them again.
"""

from __future__ import annotations

import argparse
import sys

from mailcase.cli_common import UsageError, _customer_address, _open_store, _operator, _print_json
from mailcase.config import Settings
from mailcase.errors import EXIT_FAILURE, EXIT_OK


def _customers(args: argparse.Namespace, settings: Settings) -> int:
    """``customers forget ADDRESS [--yes]``: erase what is kept of a customer's address
    (mailcase.erasure); without ``--yes`` say what would be erased and change nothing.
    ``customers purge --inactive-days N [--yes]``: the same for every customer inactive
    for N days (mailcase.retention)."""
    if args.action == "purge":
        return _purge(args, settings)
    from mailcase.erasure import ErasureRefused, erase

    address = _customer_address(args.address)
    if not address:
        raise UsageError("customers forget needs the customer's mail address")
    store = _open_store(settings, create=False)
    insiders = settings.own_addresses | frozenset(settings.agents.addresses)
    try:
        done = erase(
            store,
            settings.storage.directory,
            address,
            insiders=insiders,
            by=f"cli:{_operator()}",
            dry_run=not args.yes,
        )
    except ErasureRefused as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.dispose()
    if args.json:
        _print_json(
            {
                "cases": list(done.folios),
                "messages": done.messages,
                "files": done.files,
                "notices": done.notices,
                "erased": done.erased,
            }
        )
    elif not done.anything:
        print("nothing of that address is stored: nothing to erase")
    else:
        counts = f"{done.messages} message(s), {done.files} file(s), {done.notices} notice(s)"
        folios = ", ".join(done.folios) or "none"
        verb = "erased" if done.erased else "would erase"
        print(f"{verb} the customer's data of {len(done.folios)} case(s): {folios} ({counts})")
        if done.participations:
            print(f"{verb} the address as a participant of: {', '.join(done.participations)}")
        if not done.erased:
            print("nothing was changed: run again with --yes to erase")
    if done.files_left:
        print(
            f"mailcase: {len(done.files_left)} file(s) of the erased cases could not be removed "
            f"from {settings.storage.directory} ({done.files_left[0]} ...): the next "
            "customers forget tries them again, or remove them by hand",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    """``customers purge --inactive-days N [--yes]``: the addresses are printed (the
    admin's record of whose data was cancelled), never logged."""
    from mailcase.retention import purge_inactive

    store = _open_store(settings, create=False)
    try:
        done = purge_inactive(
            store,
            settings.storage.directory,
            args.inactive_days,
            insiders=settings.own_addresses | frozenset(settings.agents.addresses),
            by=f"cli:{_operator()}",
            dry_run=not args.yes,
        )
    finally:
        store.dispose()
    who, loose = done.customers, done.loose
    erased = who.erased or (args.yes and bool(loose.messages or loose.notices))
    if args.json:
        _print_json(
            {
                "customers": len(who.customers),
                "addresses": list(who.customers),
                "cases": list(who.folios),
                "messages": who.messages,
                "files": who.files,
                "notices": who.notices,
                "skipped": who.skipped,
                "loose_messages": loose.messages,
                "loose_notices": loose.notices,
                "loose_files": loose.files,
                "erased": erased,
            }
        )
    else:
        verb = "erased" if args.yes else "would erase"
        if who.customers:
            counts = f"{who.messages} message(s), {who.files} file(s), {who.notices} notice(s)"
            print(
                f"{verb} the data of {len(who.customers)} customer(s) inactive for "
                f"{args.inactive_days} days: {len(who.folios)} case(s) ({counts})"
            )
            for address in who.customers:
                print(f"  {address}")
            print(f"cases: {', '.join(who.folios) or 'none'}")
        else:
            print(f"no customer has been inactive for {args.inactive_days} days")
        if loose.messages or loose.notices:
            print(
                f"{verb} {loose.messages} message(s) of no case and {loose.notices} notice(s) "
                f"of no case older than that ({loose.files} file(s))"
            )
        if who.skipped:
            print(
                f"{who.skipped} customer(s) skipped: an open case, a queued notice or recent mail"
            )
        if not args.yes and (who.customers or loose.messages or loose.notices):
            print("nothing was changed: run again with --yes to erase")
    if done.files_left:
        print(
            f"mailcase: {len(done.files_left)} file(s) of the erased data could not be removed "
            f"from {settings.storage.directory} ({done.files_left[0]} ...): the next "
            "customers purge or forget tries them again, or remove them by hand",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK

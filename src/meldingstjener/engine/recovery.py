"""Alerts that traffic going through again resolves, at no cost to a good message.

Some deviations end when a message goes through: a sender whose messages we refused
(``message-refused``), our own key that failed to decrypt a sender's message
(``certificate-invalid`` under the key ``our-decryption:<sender>``), a sender whose requests to
``POST /ebms`` were refused in a row (``ebms-refused``, counted here), the payload store that
could not be written by one ``serve`` process (``store-failing``, per instance). Resolving them
with an UPDATE for every stored message would put a statement on the hot path for alerts that
are almost never open. So each process keeps the open alerts of these kinds in memory, by
*subject* (a sender, an instance's store), and a good message costs a look in a dict; only when
its subject has an open alert is the one prepared UPDATE per alert run, in the transaction that
stores the message.

A sender is a subject only when it is a party we know (we hold a signing certificate of it):
what the From of a message from anybody else says is not verified, and a key per such sender
would let anyone open an alert per request. Their refusals share one alert per error code
(``unknown-sender``), which no message resolves (by hand). The memory is bounded all the same:
at most ``REMEMBERED`` subjects with open alerts, read back at each heartbeat (beyond that, the
newest are left to the database: resolved by hand, or when fewer are open).

Several processes share a store: the set is read at the first need and again at every
heartbeat of ``serve`` (``instances.beat``, each minute), so an alert another process raised
is known here within a minute. Meanwhile a message of its subject may have gone through here:
each process remembers when each subject last went through, and the heartbeat resolves an
alert whose subject went through here after the alert was last raised (by any process; hosts
keep time, see the architecture's Clocks). An alert resolved by another process stays in the
set until its subject's next message here: one UPDATE that finds nothing open.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.store.uow import UnitOfWork

# The certificate-invalid alerts about a sender's message our keys could not decrypt (it
# encrypts to an old copy of our certificate, or ours was renewed in the register before its
# key was installed here): "certificate-invalid:our-decryption:<sender>".
DECRYPTION_ALERTS = f"{AlertKind.CERTIFICATE_INVALID}:our-decryption:"
# Who stands for every sender we do not know, in the keys of their alerts (no subject: no
# message resolves them). No HER-id looks like it.
UNKNOWN_SENDER = "unknown-sender"
# the kinds whose alerts are resolved by traffic (those with a subject in _subject_of)
WATCHED_KINDS = (AlertKind.MESSAGE_REFUSED, AlertKind.STORE_FAILING, AlertKind.EBMS_REFUSED)
# Subjects remembered per process: when each last went through, how often each was refused in a
# row, and those with open alerts. Only known parties and instances become one of the last, and
# a sender of a good message is signed with a registered certificate, but each is capped
# anyway: the oldest are forgotten first (a forgotten subject only loses the heartbeat's
# catch-up, or a count of refusals).
REMEMBERED = 10_000


def sender(her_id: str) -> str:
    """The subject of the alerts about messages from ``her_id``."""
    return f"from:{her_id}"


def peer(address: str) -> str:
    """The subject of the requests from the network address ``address`` (counted in a row; its
    alerts are not its own, see ``ebms_alerts``)."""
    return f"peer:{address}"


def store(instance: str) -> str:
    """The subject of the alerts about the payload store of the ``serve`` process ``instance``
    (only it can see that the store works again: its directory may be its own)."""
    return f"store:{instance}"


def our_decryption(her_id: str) -> str:
    """The key (under ``certificate-invalid``) of our keys failing on ``her_id``'s messages."""
    return f"our-decryption:{her_id}"


def _subject_of(dedup_key: str) -> str | None:
    kind, _, rest = dedup_key.partition(":")
    if kind == AlertKind.MESSAGE_REFUSED:  # message-refused:<sender>:<error code>
        who = rest.rpartition(":")[0]
        return None if who == UNKNOWN_SENDER else sender(who)
    if kind == AlertKind.EBMS_REFUSED:  # ebms-refused:from:<sender>, or one for the unknown
        return rest if rest.startswith("from:") else None
    if dedup_key.startswith(DECRYPTION_ALERTS):  # certificate-invalid:our-decryption:<sender>
        who = dedup_key[len(DECRYPTION_ALERTS) :]
        return None if who == UNKNOWN_SENDER else sender(who)
    if kind == AlertKind.STORE_FAILING:  # store-failing:<instance>
        return store(rest)
    return None


class RecoveryWatch:
    """This process's view of the open alerts that traffic resolves (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time (first need, heartbeat)
        self._loaded = False
        self._open: dict[str, set[str]] = {}  # subject -> dedup keys
        self._raised: set[tuple[str, str]] = set()  # (subject, key) raised since a load began
        self._went_through: OrderedDict[str, datetime] = OrderedDict()
        self._refusals: OrderedDict[str, int] = OrderedDict()  # subject -> refused in a row

    def raise_alert(
        self,
        uow: UnitOfWork,
        kind: AlertKind,
        summary: str,
        *,
        subject: str,
        key: str,
        at: datetime,
        partner_her_id: str | None = None,
    ) -> None:
        """Raise (or count) the alert ``kind:key`` about ``subject``, known to this process's
        watch once ``uow`` has committed."""
        raise_alert(uow, kind, summary, at=at, partner_her_id=partner_her_id, key=key)
        dedup_key = f"{kind}:{key}"
        uow.after_commit(lambda: self._add(subject, dedup_key))

    def went_through(self, uow: UnitOfWork, subjects: Sequence[str], *, at: datetime) -> None:
        """In the unit of work that stores a good message: resolve the open alerts about
        ``subjects``. No statement unless one may be open (after this process's first load)."""
        if not self._loaded:
            self.load(uow, at=at)
        with self._lock:
            keys = [key for subject in subjects for key in self._open.get(subject, ())]
        for key in keys:
            uow.alerts.resolve(key, at=at)
        uow.after_commit(lambda: self._through(subjects, keys, at))

    def went_through_quietly(self, subjects: Sequence[str], *, at: datetime) -> bool:
        """:meth:`went_through` without a unit of work, when no alert about ``subjects`` may be
        open: True. False: nothing was done, call :meth:`went_through` in one."""
        with self._lock:
            if not self._loaded or any(subject in self._open for subject in subjects):
                return False
        self._through(subjects, [], at)
        return True

    def refused(self, subject: str) -> int:
        """Count a refusal of ``subject``'s request; how many there were in a row, in this
        process (a request of it that goes through starts the count again)."""
        with self._lock:
            count = self._refusals.pop(subject, 0) + 1
            self._refusals[subject] = count
            while len(self._refusals) > REMEMBERED:
                self._refusals.popitem(last=False)
            return count

    def load(self, uow: UnitOfWork, *, at: datetime) -> None:
        """Read the open alerts again (the heartbeat; the first need), and resolve those whose
        subject went through in this process after the alert was last raised."""
        with self._loading:
            with self._lock:
                self._raised = set()
            rows = uow.alerts.open_keys(WATCHED_KINDS, (DECRYPTION_ALERTS,), limit=REMEMBERED)
            caught_up: list[tuple[str, datetime]] = []
            found: dict[str, set[str]] = {}
            with self._lock:
                for key, last_seen in rows:
                    subject = _subject_of(key)
                    if subject is None:
                        continue
                    through = self._went_through.get(subject)
                    if through is not None and through > last_seen:
                        caught_up.append((key, through))
                    # kept even when caught up: it may be raised again before it is resolved
                    _keep(found, subject, key)
                # raised here after the read began: the read may not have seen them
                for subject, key in self._raised:
                    _keep(found, subject, key)
                self._open = found
                self._loaded = True
            # only if not raised again since it was read (by another process, meanwhile)
            for key, through in caught_up:
                uow.alerts.resolve_if_silent(key, seen_before=through, at=at)

    def _add(self, subject: str, dedup_key: str) -> None:
        with self._lock:
            if _keep(self._open, subject, dedup_key):
                self._raised.add((subject, dedup_key))

    def _through(self, subjects: Sequence[str], keys: list[str], at: datetime) -> None:
        with self._lock:
            for subject in subjects:
                self._went_through.pop(subject, None)  # to the end: the newest is kept longest
                self._went_through[subject] = at
                self._refusals.pop(subject, None)
                if keys and subject in self._open:
                    self._open[subject].difference_update(keys)
                    if not self._open[subject]:
                        del self._open[subject]
            while len(self._went_through) > REMEMBERED:
                self._went_through.popitem(last=False)


def _keep(found: dict[str, set[str]], subject: str, dedup_key: str) -> bool:
    """Note the open alert ``dedup_key`` of ``subject``, unless ``REMEMBERED`` subjects are
    noted already (a new one is then left to the database); whether it was noted."""
    keys = found.get(subject)
    if keys is None:
        if len(found) >= REMEMBERED:
            return False
        keys = found[subject] = set()
    keys.add(dedup_key)
    return True

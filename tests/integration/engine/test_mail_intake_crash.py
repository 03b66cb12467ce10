"""A collected mail that kills the process (out of memory, a crash in native code) ends its
tries without a word. Each try is counted before it starts, so after a few the mail is put
aside instead of coming first again after every restart: shown by killing a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from engine_pair import Pair
from sqlalchemy import text

from meldingstjener.engine.mail_channel import FAILED_ROUNDS_BEFORE_QUARANTINE

CHILD = """
import os, signal, sys
from pathlib import Path
from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.engine import inbound
from meldingstjener.engine.mail_channel import MailIntake, Quarantine

def dies(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

inbound.receive = dies
ctx = build_engine(load_settings(Path(sys.argv[1])))
try:
    MailIntake(ctx, Path(sys.argv[2])).on_mail(Path(sys.argv[3]).read_bytes())
except Quarantine as quarantined:
    print("quarantined", quarantined, flush=True)
    sys.exit(3)
"""

MAIL = (
    b"Message-ID: <deadly@example.no>\r\nContent-Type: text/xml\r\n\r\n"
    b"<Envelope>a mail the process dies of</Envelope>\r\n"
)


def test_a_mail_that_kills_the_process_is_put_aside_after_a_few_tries(
    pair: Pair, tmp_path: Path
) -> None:
    mail, quarantine = tmp_path / "deadly.eml", tmp_path / "quarantine"
    mail.write_bytes(MAIL)
    command = [sys.executable, "-c", CHILD, str(pair.hospital_site.config_path), str(quarantine)]
    for _ in range(FAILED_ROUNDS_BEFORE_QUARANTINE):
        died = subprocess.run([*command, str(mail)], capture_output=True, timeout=120)
        assert died.returncode == -signal.SIGKILL, died.stderr.decode(errors="replace")[-2000:]
    put_aside = subprocess.run([*command, str(mail)], capture_output=True, timeout=120)
    assert put_aside.returncode == 3, put_aside.stderr.decode(errors="replace")[-2000:]
    [kept] = quarantine.iterdir()
    assert kept.read_bytes() == MAIL
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.list(open_only=True) if a.kind == "mail-quarantined"]
        counted = uow.session.execute(
            text("SELECT count(*) FROM kv_state WHERE key LIKE 'mail-failed:%'")
        ).scalar_one()
    assert counted == 0  # the count went with the mail
    assert "(Unknown)" in alert.summary

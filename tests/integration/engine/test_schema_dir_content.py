"""With ``formats.schema_dir`` set, a message whose business document has no schema there is
submitted and received as without schemas (a no-schema warning), instead of refused by submit
as invalid and rejected by the receiver with a T02 AppRec (found in review)."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine_pair import make_pair

from meldingstjener.devsites import GP_HER, HOSPITAL_HER, dialog_note
from meldingstjener.engine.outbound import submit


def test_a_note_whose_dialogmelding_schema_is_not_there_is_sent_and_received(
    tmp_path: Path, reference_dir: Path
) -> None:
    schemas = tmp_path / "xsd"
    schemas.mkdir()
    for schema in (reference_dir / "xsd" / "kith").glob("*.xsd"):
        if not schema.name.startswith("dialogmelding"):
            shutil.copy(schema, schemas)
    config = f'[formats]\nschema_dir = "{schemas}"\n'
    pair = make_pair(tmp_path / "sites", extra_config={GP_HER: config, HOSPITAL_HER: config})
    try:
        message_id = submit(
            pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Ring meg"), actor="t"
        )
        pair.run()
        assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
        [received] = pair.inbound_messages(pair.hospital)
        assert received.status != "rejected"
        assert received.last_error_code is None
    finally:
        pair.gp.store.database.dispose()
        pair.hospital.store.database.dispose()

"""HTTP entry points: the ebXML endpoint (``POST /ebms``), health, and the EPJ/operator API."""

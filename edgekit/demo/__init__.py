"""`edgekit demo`: pack, broker, coordinator, devices, OTA, traffic, overheat, fleet table (see
:mod:`.run`). The steps are in :mod:`.steps`; child processes are owned by :mod:`.procs`."""

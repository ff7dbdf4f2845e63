"""arpc command mode: an HTTP/WebSocket API that runs agent CLIs and reads their history.

The pieces: :mod:`.tunnel` hands relay tunnels to the in-process web server,
:mod:`.web` is the resource tree, :mod:`.sessions` runs and records agent
sessions (persisted by :mod:`.store`), :mod:`.executors` knows each CLI's
command line and output format, and :mod:`.history` reads their on-disk history.
"""

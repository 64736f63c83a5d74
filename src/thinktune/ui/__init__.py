"""`thinktune ui`: a local web page for the whole loop, a reader of run folders and a launcher of the CLI.

- :mod:`thinktune.ui.server`   the Starlette app: the static page, the JSON API, the token and origin checks
- :mod:`thinktune.ui.jobs`     `thinktune ...` subprocesses in their own session, recorded in files
- :mod:`thinktune.ui.live`     the live view's feed (metrics.jsonl and the log, by byte offset)
- :mod:`thinktune.ui.forms`    the new-run form from the config schema, and every command the page runs
- :mod:`thinktune.ui.analysis` the data doctor and the memory plan beside the form
- :mod:`thinktune.ui.runs`     the runs table, overlays, config differences, a run's results
- :mod:`thinktune.ui.paths`    which typed paths are allowed
- :mod:`thinktune.ui.chatworker` the chat's model process
- ``static/``                  the page (plain HTML, CSS and JavaScript written for thinktune; charts are SVG)
"""

"""The ``encoders`` command's subcommands, grouped by what they run (the root group is ../cli.py's):

- pipeline.py: the whole pipeline: ``encoders`` itself (the all-in-one), ``run``, ``demo``, ``stop``;
- services.py: one service each (``metrics``, ``ingest``, ``encode``, ``record``, ``view``, ``pisim``)
  and ``health``;
- keys.py: ``keys`` (CurveZMQ keys: init, add, revoke, list);
- recorded.py: what asks the recorded frames (``search``, ``events``, ``runs``, ``prune``, ``db``);
- triggers.py: ``trigger`` (text triggers for the core).

Service modules are imported only when their command runs, so that a machine with the viewer
alone installed never needs torch, and so on: at the top of these modules, settings only.
"""

from __future__ import annotations

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

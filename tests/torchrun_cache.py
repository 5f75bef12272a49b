"""`brainkernels` as test_cache starts it under torchrun: every cache build is logged with the
rank that ran it (to BUILD_LOG), and each rank records the entries training mapped, with a sum of
each one's image, to entries-rank<R>.json in the working folder."""

import json
import os
import sys
from pathlib import Path

from brainkernels import cli
from brainkernels.data.cache import PreparedCache
from brainkernels.ppr import train

real_build, real_entries = PreparedCache.build, train.prepared_entries


def logged_build(cache, request):
    with open(os.environ["BUILD_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']} {request.key}\n")
    return real_build(cache, request)


def recorded_entries(*args, **kwargs):
    entries = real_entries(*args, **kwargs)
    mapped = {entry.folder.name: float(entry.tensor("image").double().sum()) for entry in entries}
    Path(f"entries-rank{os.environ['RANK']}.json").write_text(json.dumps(mapped))
    return entries


PreparedCache.build, train.prepared_entries = logged_build, recorded_entries
sys.exit(cli.main(sys.argv[1:]))

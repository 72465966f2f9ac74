"""What the benchmark measures: the modes, the hot row's, the --previous
cases, and where a run writes its results."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# mode: (model, label, saves per row)
MODES = {
    "floor": ("FloorItem", "no receiver (floor)", 1),
    "inline": ("InlineItem", "the work in the request, after the commit", 1),
    "manual": ("ManualItem", "@receiver + on_commit(async_task)", 1),
    "default": ("DefaultItem", "async_receiver()", 1),
    "batch": ("BatchItem", "batch=True", 1),
    "coalesce": ("CoalesceItem", "batch=True, coalesce=True (3 saves a row)", 3),
    "outbox": ("OutboxItem", "outbox=True", 1),
    "outbox_batch": ("OutboxBatchItem", "outbox=True, batch=True", 1),
    "ordered": ("OrderedItem", "outbox=True, ordered=True", 1),
    "supersede": ("SupersedeItem", "outbox=True, supersede=True", 1),
}
#: A task per save: end to end only up to --e2e-max saves.
UNBATCHED = {"manual", "default", "outbox", "ordered", "supersede"}
#: Done when the request is: nothing is queued.
QUEUELESS = {"floor", "inline"}
#: Measured to compare the others' end to end with: up to --e2e-max saves.
REFERENCES = {"inline", "manual"}
#: --hot: one row committed again and again, each commit its own
#: transaction, through a handler that takes HOT_HANDLER_S.
#: mode: (model, label)
HOT = {
    "hot_outbox": ("HotItem", "outbox=True"),
    "hot_supersede": ("HotSupersedeItem", "outbox=True, supersede=True"),
}
HOT_HANDLER_S = 0.05
#: --previous: what is timed, with and without previous=.
PREVIOUS_CASES = {
    "create": "create",
    "loaded": "update, instance loaded from the database",
    "by_hand": "update, instance built by hand with its pk",
    "load": "load a row (no signal)",
}

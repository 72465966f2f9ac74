"""The jobs of ``manage.py qsignals``, one module each.

The command parses its arguments and hands each run to one of them:
``receivers`` writes the listing (the signals' dotted names from
``signal_names``, and with ``--stats`` the counts of ``results`` and
``outbox_stats`` and ``cluster``, whose numbers the admin's dashboard shows
too); ``outbox_actions`` runs ``relay``, ``retry`` and ``discard``. They
import the library's modules, never the command.
"""

"""The exactly-once submit protocol, in one place.

- :mod:`~limio_provider.exactly_once.identity`: what names an order (its ``external_id``) and its body (one
  fingerprint);
- :mod:`~limio_provider.exactly_once.ledger`: the order ledger, its states and their transitions, fenced;
- :mod:`~limio_provider.exactly_once.decisions`: a person's decision on an order whose outcome stayed unknown;
- :mod:`~limio_provider.exactly_once.submitter`: the walk of one order from the task to the wire and back,
  used by the single-order and the batch operators alike.

Nothing here is imported at DAG-parse time except :mod:`~limio_provider.exactly_once.identity`'s few lines.
"""

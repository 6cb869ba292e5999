"""Outbound message authentication: DKIM keys (:mod:`.keys`) and signing (:mod:`.dkim`, with
the incremental body canonicalization of :mod:`.canon`).

The signer is one step between the end of DATA and the spool commit (not a policy check: it
needs the body, and it adds rather than decides); the session calls it for mail from
authenticated users and trusted networks.
"""

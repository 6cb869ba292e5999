"""Several worker processes: the supervisor (binds once, owns the queue runner, restarts and
signals the workers), the worker's entry point, the shared listening sockets and the workers'
request channel to the queue runner. A single process (``[server] workers = 1``) uses none of
it but the channel's absence: see app.py."""

"""lenslab's product: storage, accounts, REST API, queue, worker and pages. Calls ``ml`` for all maths."""

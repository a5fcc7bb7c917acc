"""Webhooks (CONTRACT section 9): the customer's endpoints, the outbox the
database fills (migration 0006), and the sender that delivers it."""

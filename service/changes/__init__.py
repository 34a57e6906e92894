"""What a read found, turned into events, pure: detect (snapshot + record → snapshot and
events), events (the types and the webhook body), outbox (what one commit writes)."""

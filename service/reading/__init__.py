"""The read side: what is read when, from where, up to the commit of what it found.

schedule ──claimed lease──► runner ─┬─► user_poll     one user's records
   │   ▲                            ├─► account_feed  an account's changes (feed_run, feed_users)
   │   └── lease ended: next due,   └─► user_listing  an account's users: who joins, who leaves
   │       or the failure counted          │
   │                                       ▼ records against the stored snapshots
   └─► overdue (passed due dates) ──► changes.detect ──► changes.outbox ──► store commit
                                      (snapshots, watermark, events, due dates: one step)

plan (pure) and planner: what the key's budget allows, and the cadence every reader follows.
"""

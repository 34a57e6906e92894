"""`lms-webhooks bench`: the performance figures, measured against the simulator and a local
receiver over loopback, with the service running as real processes."""

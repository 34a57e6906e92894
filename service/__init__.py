"""lms-webhooks: poll StackOne's LMS assignments, detect changes, deliver signed webhooks."""

__version__ = "0.1.0"

"""syncer: keeps an application's users in step with Blux and nachocode."""

__version__ = "0.1.0"

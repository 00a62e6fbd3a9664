"""The workbench's screens, one per mode; each owns its workers and handlers."""

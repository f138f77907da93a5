"""An example homec plugin: passes registered through the `homec.passes` entry point."""

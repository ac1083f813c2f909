"""Offline planning: cost tables (measured or analytic), the step simulator, the placement
planner and its reports (nothing here starts a process or touches a device)."""

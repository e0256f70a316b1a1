"""bench/compare.py's per-system drivers: ``driver.py`` runs one system's scenarios with that
system's own Python (``sys_<name>.py`` holds its tasks and adapter); ``work.py`` is the work every
system runs; ``plot.py`` draws the chart (in the plot venv)."""

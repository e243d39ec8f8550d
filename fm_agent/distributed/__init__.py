"""Past one machine: fan-out jobs on worker processes or Ray actors, and policy servers as Ray actors."""

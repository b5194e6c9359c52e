"""Pure, typed building blocks: no I/O, no clocks, no tracking. Seeds are arguments."""
